"""Can the answer's confidence find the questions a small m answers right and a larger m wrong?

    .venv/bin/python -m bench.pick_by_confidence [results.parquet ...]

A measurement behind the scheduler benchmark's oracle gap. Many of the oracle's right
answers are a small m right where a dearer m is wrong. A policy could only keep them by
answering at several m and telling which answer to trust. This script tries exactly that on
`mqt eval`'s per-question rows, for every set S of two or three trained m. Every question is
answered at each m of S. The answer kept is the most confident one ("max confidence"; a tie
goes to the dearer m), or the most frequent one with confidence breaking ties ("vote").
Nothing is fitted, so the numbers are exact for these rows.

Cost per row: the answers at every m of S, less what each pass after the first shares with
the one before (vision + MQT and the LM's prompt prefix: `shared_flops`, as a cascade's
escalation is priced, pipeline/scheduler/cascade.py). Reference columns:
the dearest m of S alone, the best single trained m whose cost per row is at most the set's,
and "any m of S" (right if some m of S is right: what a perfect picker would reach). Prints
a Markdown table of the sets, the ten best by max confidence's gain over the dearest m
first, and a one-line summary.
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter
from pathlib import Path

from bench.scheduler import trained_ms
from mqt.config import preset
from mqt.evaluation.results import rows_by_question
from pipeline.scheduler.cascade import shared_flops

ROOT = Path(__file__).resolve().parents[1]


def keep_most_confident(by_m: dict[int, dict], s: tuple[int, ...]) -> dict:
    return max((by_m[m] for m in s), key=lambda r: (r["confidence"], r["m"]))


def keep_vote(by_m: dict[int, dict], s: tuple[int, ...]) -> dict:
    votes = Counter(by_m[m]["output"] for m in s)
    return max((by_m[m] for m in s), key=lambda r: (votes[r["output"]], r["confidence"], r["m"]))


def measure(per: dict, ms: list[int], shared: dict[int, int]) -> list[dict]:
    n = len(per)
    single = {m: (sum(q[m]["correct"] for q in per.values()) / n,
                  sum(q[m]["flops"] for q in per.values()) / n) for m in ms}
    out = []
    for k in (2, 3):
        for s in itertools.combinations(ms, k):
            cost = sum(sum(q[m]["flops"] for m in s) - sum(shared[m] for m in s[:-1])
                       for q in per.values()) / n
            fits = [single[m][0] for m in ms if single[m][1] <= cost]
            out.append({
                "set": s, "cost": cost, "dearest": single[s[-1]][0],
                "best_fixed": max(fits),
                "max_conf": sum(keep_most_confident(q, s)["correct"] for q in per.values()) / n,
                "vote": sum(keep_vote(q, s)["correct"] for q in per.values()) / n,
                "any": sum(any(q[m]["correct"] for m in s) for q in per.values()) / n})
    return out


def main(argv: list[str]) -> None:
    paths = argv or [str(ROOT / "docs" / "eval" / "results.parquet")]
    ms = trained_ms(paths[0])
    per = rows_by_question(paths, ms)
    res = measure(per, ms, shared_flops(preset("mqt-smol"), ms))
    res.sort(key=lambda r: r["max_conf"] - r["dearest"], reverse=True)
    print(f"{len(per)} questions, trained m {ms}; accuracy (%) per set of m:\n")
    print("| m answered | GFLOPs/row | dearest m alone | best fixed m within the cost | "
          "max confidence | vote | any m of S right |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in res[:10]:
        print(f"| {', '.join(map(str, r['set']))} | {r['cost'] / 1e9:.2f} | "
              f"{100 * r['dearest']:.2f} | {100 * r['best_fixed']:.2f} | "
              f"{100 * r['max_conf']:.2f} | {100 * r['vote']:.2f} | {100 * r['any']:.2f} |")
    beats = sum(max(r["max_conf"], r["vote"]) > r["best_fixed"] for r in res)
    best = max(res, key=lambda r: max(r["max_conf"], r["vote"]) - r["best_fixed"])
    gain = max(best["max_conf"], best["vote"]) - best["best_fixed"]
    print(f"\n{len(res)} sets; max confidence or vote above the best fixed m within the same "
          f"cost in {beats}; the largest difference {100 * gain:+.2f} points "
          f"(m {', '.join(map(str, best['set']))}).")


if __name__ == "__main__":
    main(sys.argv[1:])
