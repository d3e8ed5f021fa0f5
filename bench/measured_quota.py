"""`mqt annotate` under a quota of measured accelerator-seconds (quota.measured=true), live.

    .venv/bin/python -m bench.measured_quota [EVERY]

The corpus: every EVERY-th row (default 5: 310 rows) of bench/annotate_by_kind.py's
held-out corpus (the questions of docs/eval-s1 that are not in the shipped calibration),
the shipped `mqt-smol`, a local Ray, one engine actor. A first job with a quota far too
large to bind measures the FLOP/s the model reaches here (F, the summary's
`flops_per_second_measured`). `mqt profile` then times 16 rows per task of the same corpus
at m = 1, 4, 16, 64 (one thread, batches of 16, as the jobs run), and the quota Q is the
time that profile says m = 16 takes on every row. Each job then plans Q either at one
FLOP/s, 0.75 F, F or 1.5 F (`quota.flops_per_second`), or on the time profile
(`quota.time_profile`) as measured, or as a profile of a machine 0.75x or 1.5x as fast
would say (every coefficient divided by that factor), without and with pacing; the two
kinds of job alternate. For each it prints the measured time spent against Q (the part
past the rows' reservations, overrun, included), the rows the ledger refused, accuracy
(refused rows count wrong), the m used and the FLOP/s measured. Nothing is fitted to the
results; the numbers move with the machine's load.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from bench.annotate_by_kind import corpus
from jobs import profile as profile_job
from mqt.tasks import TASKS
from pipeline.annotate import AnnotateConfig, annotate
from pipeline.scheduler.quality import from_calibration, shipped_calibration
from pipeline.scheduler.quota import QuotaArgs
from pipeline.scheduler.timing import TimeModel

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "runs" / "measured-quota"


def subset(every: int) -> tuple[Path, list[str]]:
    """Every `every`-th row of the held-out corpus, as a manifest of its own (beside the
    corpus's: its image paths are relative to the manifest)."""
    full = corpus()
    lines = [x for x in full.read_text().splitlines() if x.strip()][::every]
    path = full.with_name(f"every-{every}.jsonl")
    path.write_text("\n".join(lines) + "\n")
    return path, lines


def run(manifest: Path, name: str, quota: QuotaArgs) -> tuple[dict, float]:
    """The job's summary and its accuracy (refused rows wrong) over all rows."""
    out = OUT / name
    cfg = AnnotateConfig(preset="mqt-smol", source=str(manifest), output=str(out),
                          overwrite=True, batch_size=16, block_rows=16, progress=False,
                          quota=quota)
    s = annotate(cfg)
    rows = pq.read_table(out / "data").to_pylist()
    right = sum(r["error"] is None and r["reference"] is not None
                and TASKS[r["task"]].is_correct(r["prediction"] or "", r["reference"])
                for r in rows)
    return s, right / len(rows)


def line(label: str, s: dict, acc: float) -> str:
    q = s["quota"]
    used = Counter()
    for hist in s["m_histogram"].values():
        used.update(hist)
    spent = q["spent_seconds"] + q["overrun_seconds"]
    return (f"| {label} | {spent:.1f} s ({100 * q['share']:.1f}%) | "
            f"{q['overrun_seconds']:.2f} s | {q['refused_rows']} | {100 * acc:.2f}% | "
            + ", ".join(f"{m}: {n}" for m, n in sorted(used.items()))
            + f" | {q['flops_per_second_measured'] / 1e9:.1f} |")


def main(every: int) -> None:
    manifest, rows = subset(every)
    probe, pacc = run(manifest, "probe", QuotaArgs(seconds=1e6, measured=True,
                                                flops_per_second=30e9))
    fps = probe["quota"]["flops_per_second_measured"]
    measured = profile(manifest)
    seconds = profiled_cost(rows, measured, 16)
    lines = [f"{len(rows)} held-out rows ({manifest}); with a quota that does not bind "
             "(the plan takes each task's dearest m worth buying, quota.cap_se) mqt-smol "
             f"measured {fps / 1e9:.1f} GFLOP/s "
             f"(F). Time profile (`mqt profile`, 16 rows per task of this corpus): "
             f"{measured.seconds_per_flop * 1e12:.2f} ms per GFLOP + per call "
             + ", ".join(f"{t} {b * 1e3:.1f} ms" for t, b in measured.seconds_per_call.items())
             + f". Q = {seconds:.1f} s: what the profile says m = 16 on every row takes", "",
             "| plan, pacing | time spent (of Q) | past reservations |"
             " refused rows | accuracy | m used (rows) | GFLOP/s measured |",
             "|---|---:|---:|---:|---:|---|---:|", line("no binding quota (probe)", probe, pacc)]
    for ratio in (0.75, 1.0, 1.5):
        path = OUT / f"profile-x{ratio:g}.json"
        TimeModel(measured.seconds_per_flop / ratio,
                  {t: b / ratio for t, b in measured.seconds_per_call.items()},
                  measured.device, measured.batch_size).save(path)
        for pacing in (False, True):
            how = "paced" if pacing else "static"
            quota = QuotaArgs(seconds=seconds, measured=True, flops_per_second=ratio * fps,
                              pacing=pacing)
            s, acc = run(manifest, f"x{ratio:g}-{how}", quota)
            lines.append(line(f"{ratio:g} F, {how}", s, acc))
            quota = QuotaArgs(seconds=seconds, measured=True, time_profile=str(path),
                              pacing=pacing)
            try:
                s, acc = run(manifest, f"profile-x{ratio:g}-{how}", quota)
            except ValueError as e:  # the profile says Q cannot pay m = 1 on every row
                lines.append(f"| profile x{ratio:g}, {how} | refused before any work: {e} |")
            else:
                lines.append(line(f"profile x{ratio:g}, {how} (time "
                                  f"{s['quota']['time_vs_profile']:.2f}x the profile's)", s,
                                  acc))
            print("\n".join(lines), flush=True)
    print("\n".join(lines))


def profiled_cost(manifest_rows: list[str], tm: TimeModel, m: int) -> float:
    """Seconds the time profile says these rows take at one m (the shipped calibration's
    mean FLOPs per task)."""
    curves = from_calibration(shipped_calibration())
    tasks = Counter(json.loads(x)["task"] for x in manifest_rows)
    return sum(n * tm.units(t, curves[t].at(m)[1]) for t, n in tasks.items()) / 1e6


def profile(manifest: Path) -> TimeModel:
    """`mqt profile` on 16 rows per task of the corpus, as the jobs run (batches of 16,
    one thread)."""
    cfg = profile_job.Config(preset="mqt-smol", source=str(manifest), rows=16,
                             batch_size=16, threads=1, output=str(OUT / "profile"))
    profile_job.main(cfg)
    return TimeModel.load(OUT / "profile" / "time_profile.json")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
