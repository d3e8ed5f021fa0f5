"""Per-image budgets: the cascade, simulated on calibration rows, fitted per task, as a policy.

A cascade `Cascade(m1, m2, t)` (pipeline/scheduler/policy.py) answers every row at m1; a row whose
confidence is below t is answered again at m2. The image is encoded and the MQT run once, at
the largest m of the batch, and the first m rows of its output serve every m (prefix
property), so an escalated row pays the m1 answer plus the m2 answer less what the two share:

    cost = cost(m1) + cost(m2) - vision - query(m1)

with the parts of mqt/cost.py `total_flops(cfg, m, T, K)` (.vision, .query): the m2 attempt
is charged the MQT up to m2, which covers the m1 queries, and no second vision pass.

Generation is greedy and scoring is deterministic, so the per-question rows of `mqt eval`
(results.parquet: correct, confidence, FLOPs per question and m) say exactly what a cascade
would answer and spend (`outcome`, `simulate`). `with_cascades` enumerates (m1, m2, t) per
task, t at quantiles of the m1 confidence, measures each on calibration questions and adds
them to the task's `QualityCurve`; the planner's hull then picks per task between fixed m
and cascades. Fit on one half of the questions and measure on the other (`split_halves`),
or the gain is overfit. `replay` runs a policy over calibration questions behind a real
`Ledger`, as the engine does: a refused first attempt leaves the row unanswered, a
refused escalation keeps the m1 answer; optionally escalations also draw on their own pot
(`escalation_budget`: the quota less the planned first attempts), so that more escalations
than planned early on cannot starve later rows. `CascadePolicy` is a fixed choice per task.

Prices: `mqt eval` prices each row as the engine charges it (`total_flops`; for
multiple choice `scored_flops`), and `shared` takes off an escalation what the engine
does not compute again: one vision + MQT at m1, and the LM's prompt prefix up to the m1
visual tokens, whose KV cache the m2 answer continues from (`shared_flops`). Pure Python,
no Ray.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mqt.cost import lm_prefix_flops, query_flops, vision_flops
from mqt.evaluation.results import rows_by_question
from mqt.model import prefix_text_tokens
from pipeline.scheduler.ledger import Ledger
from pipeline.scheduler.policy import Cascade, Choice, TokenPolicy, check_choice, first_m
from pipeline.scheduler.quality import QualityCurve, task_of

QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # escalated shares tried


@dataclass(frozen=True)
class Question:
    """One calibration question: per m, right or not, its confidence and its FLOPs."""

    id: str
    task: str
    kind: str
    correct: Mapping[int, bool]
    confidence: Mapping[int, float]
    flops: Mapping[int, int]
    text: str = ""  # the question asked ("" for a caption)


@dataclass(frozen=True)
class Outcome:
    """What a policy did for one row: the final m, right or not, FLOPs spent in all."""

    m: int
    correct: bool
    flops: int
    escalated: bool = False


# ------------------------------------------------------------------ calibration rows


def load_questions(paths: str | Path | Sequence[str | Path],
                   ms: Iterable[int] | None = None) -> list[Question]:
    """The per-question rows of `mqt eval` (results.parquet; or several runs of one model,
    joined by `rows_by_question`), restricted to `ms` if given; only questions answered at
    every kept m. Sorted by id, so runs are reproducible."""
    keep = set(ms) if ms is not None else None
    per = rows_by_question(paths, keep)
    return [_question([r for m, r in by_m.items() if keep is None or m in keep])
            for by_m in per.values()]


def _question(rows: list[dict]) -> Question:
    r0 = rows[0]
    return Question(r0["id"], r0["task"], r0["kind"], {r["m"]: bool(r["correct"]) for r in rows},
                    {r["m"]: float(r["confidence"]) for r in rows},
                    {r["m"]: round(r["flops"]) for r in rows},  # whole FLOPs, as stored
                    r0.get("question") or "")


def shared_flops(cfg, ms: Iterable[int]) -> dict[int, int]:
    """Per m1: the FLOPs an escalation from m1 does not pay again: vision + MQT at m1, and
    the LM's work on the prompt prefix it continues from (the template's text tokens before
    the image and the m1 visual tokens; their attention over later positions, which depends
    on the question, is left out: the escalation's price is an upper bound of what the
    engine charges)."""
    before = _prefix_tokens(cfg)
    return {m: vision_flops(cfg) + query_flops(cfg, m) + lm_prefix_flops(cfg, before + m)
            for m in ms}


def _prefix_tokens(cfg) -> int:
    key = (cfg.template, cfg.tokenizer, cfg.lm.kind, cfg.lm.path)
    if key not in _PREFIX_TOKENS:
        _PREFIX_TOKENS[key] = prefix_text_tokens(cfg)
    return _PREFIX_TOKENS[key]


_PREFIX_TOKENS: dict[tuple, int] = {}  # per template and tokenizer: building one takes time


def split_halves(questions: Sequence[Question], seed: int = 0) -> tuple[list, list]:
    """Two halves, stratified by task and kind: within each (task, kind), questions ordered
    by a seeded hash of the id go alternately to each half."""
    by_kind = defaultdict(list)
    for q in questions:
        by_kind[q.task, q.kind].append(q)
    a, b = [], []
    for kind in sorted(by_kind):
        ordered = sorted(by_kind[kind], key=lambda q: _hash(seed, q.id))
        a += ordered[0::2]
        b += ordered[1::2]
    return a, b


def seeded_order(questions: Sequence[Question], seed: int = 0) -> list[Question]:
    """The questions in an order fixed by the seed (as rows of a corpus might arrive)."""
    return sorted(questions, key=lambda q: _hash(seed, q.id))


def _hash(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


# ------------------------------------------------------------------ the simulation


def outcome(q: Question, choice: Choice, shared: Mapping[int, int]) -> Outcome:
    """What `choice` answers and spends on question `q` (exact: greedy, deterministic)."""
    if not isinstance(choice, Cascade):
        return Outcome(choice, q.correct[choice], q.flops[choice])
    m1, m2 = choice.m1, choice.m2
    if not choice.escalates(q.confidence[m1]):
        return Outcome(m1, q.correct[m1], q.flops[m1])
    return Outcome(m2, q.correct[m2], escalated_flops(q.flops[m1], q.flops[m2], shared[m1]),
                   escalated=True)


def escalated_flops(first: int, second: int, shared: int) -> int:
    """An escalated row: both answers, less the vision + MQT work the second reuses."""
    return first + second - shared


def simulate(questions: Sequence[Question], choices: Sequence[Choice],
             shared: Mapping[int, int]) -> list[Outcome]:
    return [outcome(q, c, shared) for q, c in zip(questions, choices, strict=True)]


def summary(outcomes: Sequence[Outcome | None]) -> dict:
    """Accuracy and FLOPs over rows; an unanswered row (None) counts as wrong, costs 0."""
    done = [o for o in outcomes if o is not None]
    n = max(1, len(outcomes))
    return {"rows": len(outcomes), "accuracy": sum(o.correct for o in done) / n,
            "spend": sum(o.flops for o in done), "unanswered": len(outcomes) - len(done),
            "escalated": sum(o.escalated for o in done)}


def replay(questions: Sequence[Question], policy, shared: Mapping[int, int],
           quota_flops: int, key: str = "task", escalation_flops: int | None = None,
           batch: int = 0, ledger: Ledger | None = None) -> list[Outcome | None]:
    """Run `policy` over the questions in order behind a Ledger of `quota_flops`, as the
    predictor does (with exact costs where it reserves upper bounds): a refused first
    attempt leaves the row unanswered (None); a refused escalation keeps the m1 answer.
    `key` is the field the policy is asked by ("task", or "kind" for per-kind plans).
    `escalation_flops`: escalations also draw on a second ledger of that size (see
    `escalation_budget`), so they cannot eat what later rows' first attempts need.
    `batch`: ask the policy for that many rows at a time, charging each batch before the
    next is chosen (a pacing policy reads the spend in between; 0 = all rows at once).
    `ledger`: the job's ledger (default a fresh one of `quota_flops`)."""
    ledgers = [ledger if ledger is not None else Ledger(quota_flops)]
    pot = [Ledger(escalation_flops)] if escalation_flops is not None else []
    out = []
    step = batch or max(1, len(questions))
    for i in range(0, len(questions), step):
        chunk = questions[i: i + step]
        choices = policy.choose([_key(q, key) for q in chunk], [q.text for q in chunk])
        out += [_charged(ledgers, pot + ledgers, q, c, shared)
                for q, c in zip(chunk, choices, strict=True)]
    return out


def _charged(first_ledgers, up_ledgers, q: Question, choice: Choice, shared) -> Outcome | None:
    first = outcome(q, first_m(choice), shared)
    if not _pay(first_ledgers, q.id, first.flops):
        return None
    full = outcome(q, choice, shared)
    if full.escalated and _pay(up_ledgers, f"{q.id}+m{full.m}", full.flops - first.flops):
        return full
    return first


def _pay(ledgers: list[Ledger], key: str, flops: int) -> bool:
    """Reserve in every ledger (all or none), then commit: the exact cost is known here."""
    held = []
    for ledger in ledgers:
        if not ledger.reserve(key, flops):
            for h in held:
                h.release(key)
            return False
        held.append(ledger)
    for ledger in ledgers:
        ledger.commit(key, flops)
    return True


def escalation_budget(plan, curves: Mapping[str, QualityCurve]) -> int:
    """What a plan leaves for escalations: its quota less the first attempts it plans (each
    row at its m, or at m1 of its cascade, at the curve's mean cost)."""
    first = 0
    for t in plan.tasks:
        for part in t.parts:
            casc = isinstance(part.m, Cascade)
            first += part.rows * (curves[t.task].at(part.m.m1)[1] if casc else part.cost)
    return max(0, plan.quota_cost - first)


# ------------------------------------------------------------------ fitting


def fixed_curves(questions: Sequence[Question], ms: Sequence[int],
                 key: str = "task") -> dict[str, QualityCurve]:
    """Per task (or kind): accuracy and mean FLOPs (rounded up) at each m, as `mqt eval`'s
    calibration.json gives them, but from these questions only."""
    groups = _groups(questions, key)
    return {g: QualityCurve(g, tuple(ms), tuple(_mean([q.correct[m] for q in qs]) for m in ms),
                            tuple(math.ceil(_mean([q.flops[m] for q in qs])) for m in ms))
            for g, qs in groups.items()}


def candidates(questions: Sequence[Question], ms: Sequence[int],
               quantiles: Sequence[float] = QUANTILES) -> list[Cascade]:
    """Every m1 < m2 of `ms`, with thresholds at quantiles of the m1 confidence: the
    threshold at quantile p escalates about a share p of these questions."""
    out = []
    for i, m1 in enumerate(ms):
        confs = sorted(q.confidence[m1] for q in questions)
        ts = sorted({confs[min(len(confs) - 1, math.ceil(p * len(confs)))] for p in quantiles})
        out += [Cascade(m1, m2, t) for m2 in ms[i + 1:] for t in ts]
    return out


def cascade_options(questions: Sequence[Question], ms: Sequence[int], shared: Mapping[int, int],
                    quantiles: Sequence[float] = QUANTILES) -> tuple:
    """(Cascade, accuracy, mean FLOPs rounded up) of every candidate on these questions."""
    opts = []
    for c in candidates(questions, ms, quantiles):
        s = summary(simulate(questions, [c] * len(questions), shared))
        opts.append((c, s["accuracy"], math.ceil(s["spend"] / len(questions))))
    return tuple(opts)


def cascade_accuracies(questions: Sequence[Question], cascades: Sequence[Cascade]) -> list[float]:
    """Each cascade's accuracy on these questions, as `simulate` counts it (a row escalates
    unless its m1 confidence is >= the threshold: NaN escalates), in O(n log n) per (m1, m2)
    pair: the questions sorted by m1 confidence, the escalated ones are a prefix."""
    n, out, by_pair = len(questions), {}, defaultdict(list)
    for c in cascades:
        by_pair[c.m1, c.m2].append(c)
    for (m1, m2), cs in by_pair.items():
        rows = sorted((q.confidence[m1], q.correct[m1], q.correct[m2]) for q in questions
                      if q.confidence[m1] == q.confidence[m1])
        always = sum(q.correct[m2] for q in questions if q.confidence[m1] != q.confidence[m1])
        confs = [r[0] for r in rows]
        low = [0]  # right answers at m2 of the first k rows (escalated)
        for r in rows:
            low.append(low[-1] + r[2])
        high = [0]  # right answers at m1 of the last k rows (kept)
        for r in reversed(rows):
            high.append(high[-1] + r[1])
        for c in cs:
            k = bisect.bisect_left(confs, c.threshold)
            out[c] = (always + low[k] + high[len(rows) - k]) / max(n, 1)
    return [out[c] for c in cascades]


def with_cascades(questions: Sequence[Question], ms: Sequence[int], shared: Mapping[int, int],
                  key: str = "task",
                  quantiles: Sequence[float] = QUANTILES) -> dict[str, QualityCurve]:
    """`fixed_curves` plus, per task (or kind), every candidate cascade as an option."""
    groups = _groups(questions, key)
    return {g: replace(c, cascades=cascade_options(groups[g], ms, shared, quantiles))
            for g, c in fixed_curves(questions, ms, key).items()}


def cap_m(questions: Sequence[Question], ms: Sequence[int], z: float = 1.0) -> int:
    """The dearest m worth buying for these questions: the cheapest m of `ms` whose accuracy
    is within `z` standard errors of the most accurate m's (the one-standard-error rule at
    z = 1; z = 0: the most accurate m, the cheapest among equals). The standard error is the
    paired one, of the per-question difference (right at the best m - right at m): two m
    that answer mostly the same questions right are told apart on fewer questions than
    their accuracies alone would need. A gain within it is one the calibration cannot tell
    from noise, and on new rows the most accurate m of a noisy curve is a little worse (a
    winner's curse), so a plan that buys it spends more for nothing it can show."""
    ms, n = sorted(ms), len(questions)
    if n < 2:
        return ms[-1]
    right = [[int(bool(q.correct[m])) for q in questions] for m in ms]
    acc = [sum(r) for r in right]
    best = acc.index(max(acc))
    for j in range(best):
        d = [a - b for a, b in zip(right[best], right[j], strict=True)]
        mean = sum(d) / n
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n)
        if mean <= z * se:
            return ms[j]
    return ms[best]


def cap_ms(questions: Sequence[Question], curves: Mapping[str, QualityCurve],
           z: float = 1.0) -> dict[str, int]:
    """Per task of `curves` with questions here, `cap_m` over its curve's m."""
    by_task = _groups(questions, "task")
    return {t: cap_m(qs, curves[t].ms, z) for t, qs in by_task.items() if t in curves}


def capped(curves: Mapping[str, QualityCurve], tops: Mapping[str, int]) -> dict:
    """Each task's curve, and each of its "task:kind" groups', without the options dearer
    than the task's m in `tops` (`QualityCurve.upto`); curves of other tasks unchanged."""
    return {g: c.upto(tops[task_of(g)]) if task_of(g) in tops else c
            for g, c in curves.items()}


def _groups(questions: Sequence[Question], key) -> dict[str, list[Question]]:
    groups = defaultdict(list)
    for q in questions:
        groups[_key(q, key)].append(q)
    return dict(sorted(groups.items()))


def _key(q: Question, key) -> str:
    """A question's group: the field named `key` ("task", "kind"), or `key(q)` (a callable,
    such as pipeline.scheduler.kinds.KindGroups.key)."""
    return key(q) if callable(key) else getattr(q, key)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


# ------------------------------------------------------------------ as a TokenPolicy


@dataclass
class CascadePolicy(TokenPolicy):
    """A `TokenPolicy`: per task an int m or a `Cascade`; tasks not listed get `default`."""

    per_task: dict[str, Choice]
    default: Choice | None = None

    def check(self, num_queries: int) -> None:
        for task, choice in self.per_task.items():
            check_choice(f"cascade.{task}", choice, num_queries)
        if self.default is not None:
            check_choice("cascade.default", self.default, num_queries)

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[Choice]:
        return [self._one(t) for t in tasks]

    def _one(self, task: str) -> Choice:
        choice = self.per_task.get(task, self.default)
        if choice is None:
            raise ValueError(f"task {task!r} has no choice; listed: {sorted(self.per_task)}")
        return choice
