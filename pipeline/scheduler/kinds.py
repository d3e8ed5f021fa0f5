"""Per-image budgets from the question: plan m per (task, question kind), not per task alone.

Within one task, questions of different kinds need very different numbers of visual tokens
(on `mqt-smol`: an easy-vqa yes/no question is answered as well at m = 4 as at 64, a mosaic
cell digit needs 16 or more). A predictor of the m a row needs, from a cheap feature of the
row: the question text.

- `KindClassifier`: question text -> kind (the `kind` column of `mqt eval`'s results, e.g.
  "mosaic/cell_digit"), a multinomial naive Bayes over the word unigrams and bigrams of the
  calibration questions. A question whose words are mostly unseen in the calibration
  (fewer than `min_known` of them) has no kind: nothing in the calibration says what it needs.
- `KindGroups`: the plan's groups. A row of task t whose question is classified as kind k
  goes to group "t:k" if the calibration has at least `min_rows` questions there, else to
  group "t" (the task's own curve, as the per-task plan). Calibration questions are grouped
  by the same classifier (not by their true kind), so each group's curve is measured on the
  questions a job would put there.
- `GroupedPolicy`: any per-task `TokenPolicy` (a `PlanPolicy`, the pacer) asked by group
  instead of task; `mqt annotate quota.by=kind` plugs it in where the per-task plan goes.

- `shrunk` / `choose_shrinkage`: a group's curve is measured on fewer questions than its
  task's, and the plan takes each group's best-looking m, which on new rows is a little
  worse (a winner's curse: at generous quotas the per-kind plan fell 0.6 points below the
  best fixed m in `python -m bench.scheduler`). Each group's accuracies are pulled toward its
  task's by alpha pseudo-rows (its cascade options' toward the same cascades' accuracies on
  its task's questions), alpha chosen by two-fold cross-validation on the calibration
  at the job's own FLOPs per row: the alpha whose plans answer the most held-out calibration
  questions right (replayed behind a ledger, as the job runs).

The planner does not change: groups are its "tasks". The plan counts a job's rows per group
before it starts (the classifier is deterministic), so its spend <= Q holds as for tasks, and
the ledger enforces Q row by row either way. Pure Python, no Ray, no model.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from pipeline.scheduler.cascade import (
    QUANTILES,
    cap_ms,
    capped,
    cascade_accuracies,
    escalation_budget,
    fixed_curves,
    replay,
    split_halves,
    with_cascades,
)
from pipeline.scheduler.plan import plan
from pipeline.scheduler.policy import Choice, TokenPolicy
from pipeline.scheduler.quality import group_name, task_of
from pipeline.scheduler.quota import InfeasibleQuota, Quota

MIN_ROWS = 20  # calibration questions a (task, kind) group needs for a curve of its own
MIN_KNOWN = 0.5  # share of a question's words seen in the calibration for it to get a kind
# the pseudo-rows of its task's curve a group's curve may be shrunk by (inf: the task's
# accuracy at each m, the group's own costs); cross-validation picks one per job
SHRINKAGE = (0.0, 10.0, 30.0, 100.0, 300.0, 1000.0, math.inf)
_WORD = re.compile(r"[a-z0-9]+")


def features(text: str | None) -> tuple[list[str], list[str]]:
    """(words, features): lower-case words, and the words plus their bigrams (with the
    question's start and end as words), what the classifier counts."""
    words = _WORD.findall((text or "").lower())
    padded = ["<s>", *words, "</s>"]
    return words, words + [f"{a} {b}" for a, b in zip(padded, padded[1:], strict=False)]


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity (for the predict cache)
class KindClassifier:
    """Multinomial naive Bayes with add-one smoothing: kind = argmax log P(kind) +
    sum over features of log P(feature | kind). `predict` is None for an empty question or
    one with fewer than `min_known` of its words in the calibration vocabulary."""

    counts: Mapping[str, Mapping[str, int]]  # kind -> feature -> count
    priors: Mapping[str, int]  # kind -> questions
    vocab: frozenset[str]  # every feature seen
    words: frozenset[str]  # every word seen
    min_known: float = MIN_KNOWN

    @classmethod
    def fit(cls, texts: Iterable[str | None], kinds: Iterable[str],
            min_known: float = MIN_KNOWN) -> KindClassifier:
        counts: dict[str, Counter] = defaultdict(Counter)
        priors: Counter = Counter()
        words: set[str] = set()
        for text, kind in zip(texts, kinds, strict=True):
            ws, fs = features(text)
            if not ws:
                continue  # an empty question (a caption prompt) says nothing of its kind
            counts[kind].update(fs)
            priors[kind] += 1
            words.update(ws)
        if not 0 <= min_known <= 1:
            raise ValueError(f"min_known must lie in [0, 1], got {min_known!r}")
        vocab = frozenset(f for c in counts.values() for f in c)
        return cls({k: dict(c) for k, c in counts.items()}, dict(priors), vocab,
                   frozenset(words), min_known)

    @property
    def kinds(self) -> list[str]:
        return sorted(self.priors)

    def predict(self, text: str | None) -> str | None:
        return _predict(self, text or "")

    def scores(self, text: str | None) -> dict[str, float]:
        """Per kind, the log posterior up to a constant (features outside the vocabulary
        are left out: they favour no kind)."""
        _, fs = features(text)
        fs = [f for f in fs if f in self.vocab]
        total, v = sum(self.priors.values()), len(self.vocab)
        out = {}
        for kind in self.kinds:
            c = self.counts[kind]
            denom = math.log(sum(c.values()) + v)
            out[kind] = (math.log(self.priors[kind] / total)
                         + sum(math.log(c.get(f, 0) + 1) - denom for f in fs))
        return out


@lru_cache(maxsize=65536)
def _predict(clf: KindClassifier, text: str) -> str | None:
    words, _ = features(text)
    if not words or not clf.priors:
        return None
    if sum(w in clf.words for w in words) < clf.min_known * len(words):
        return None
    scores = clf.scores(text)
    return max(sorted(scores), key=lambda k: scores[k])


@dataclass(frozen=True, eq=False)
class KindGroups:
    """Which plan group a row goes to: "task:kind" for the (task, kind) pairs in `groups`,
    else the task itself."""

    classifier: KindClassifier
    groups: frozenset[str]

    @classmethod
    def fit(cls, questions: Sequence, min_rows: int = MIN_ROWS,
            min_known: float = MIN_KNOWN) -> KindGroups:
        """From calibration questions (pipeline.scheduler.cascade.Question: task, kind, text)."""
        clf = KindClassifier.fit([q.text for q in questions], [q.kind for q in questions],
                                 min_known)
        sizes = Counter(group_name(q.task, k) for q in questions
                        if (k := clf.predict(q.text)) is not None)
        return cls(clf, frozenset(g for g, n in sizes.items() if n >= min_rows))

    def group(self, task: str, question: str | None) -> str:
        kind = self.classifier.predict(question)
        g = group_name(task, kind) if kind is not None else task
        return g if g in self.groups else task

    def key(self, q) -> str:
        """The group of a calibration question (for `pipeline.scheduler.cascade.fixed_curves`)."""
        return self.group(q.task, q.text)

    def of_rows(self, tasks: Sequence[str], questions: Sequence[str | None]) -> list[str]:
        return [self.group(t, q) for t, q in zip(tasks, questions, strict=True)]


def group_curves(questions: Sequence, ms: Sequence[int], groups: KindGroups,
                 task_curves: Mapping, shared: Mapping[int, int] | None = None,
                 quantiles: Sequence[float] | None = None) -> dict:
    """Quality curves per group: each "task:kind" group measured on the calibration questions
    the classifier puts there (with cascades if `shared` is given: what an escalation from
    each m1 reuses; thresholds at `quantiles`; each cascade's accuracy on all its task's
    questions beside it, as its `cascade_prior`), and each task's own curve from
    `task_curves` for its rows that get no group."""
    qs = [q for q in questions if groups.key(q) != q.task]
    fitted = (with_cascades(qs, list(ms), shared, groups.key, quantiles or QUANTILES)
              if shared is not None else fixed_curves(qs, list(ms), groups.key))
    for g, c in fitted.items():
        if c.cascades:
            own = [q for q in questions if q.task == task_of(g)]
            fitted[g] = replace(c, cascade_prior=tuple(
                cascade_accuracies(own, [x for x, _, _ in c.cascades])))
    return {**dict(task_curves), **fitted}


def group_sizes(questions: Sequence, groups: KindGroups) -> dict[str, int]:
    """Calibration questions per group."""
    return dict(Counter(groups.key(q) for q in questions))


def shrunk(curves: Mapping, sizes: Mapping[str, int], alpha: float) -> dict:
    """Each "task:kind" group's accuracy at each m pulled toward its task's by `alpha`
    pseudo-rows: (n a_group + alpha a_task) / (n + alpha), n its calibration questions
    (alpha = inf: the task's accuracy); its cascade options' accuracies likewise toward
    the same cascades' accuracies on the task's questions (their `cascade_prior`). Costs
    stay the group's own; the tasks' curves are unchanged."""
    if alpha == 0:
        return dict(curves)
    out = {}
    for name, c in curves.items():
        task = curves.get(task_of(name))
        if name == task_of(name) or task is None or task.ms != c.ms:
            out[name] = c
            continue
        n = sizes.get(name, 0)
        acc = tuple(_pulled(a, t, n, alpha) for a, t in zip(c.accuracy, task.accuracy,
                                                             strict=True))
        cascades = c.cascades if not c.cascade_prior else tuple(
            (x, _pulled(a, p, n, alpha), f)
            for (x, a, f), p in zip(c.cascades, c.cascade_prior, strict=True))
        out[name] = replace(c, accuracy=acc, cascades=cascades)
    return out


def _pulled(a: float, toward: float, n: int, alpha: float) -> float:
    """a, measured on n questions, shrunk toward `toward` by alpha pseudo-rows."""
    return toward if math.isinf(alpha) else (n * a + alpha * toward) / (n + alpha)


def fit_groups(questions: Sequence, ms: Sequence[int], shared: Mapping[int, int] | None = None,
               quantiles: Sequence[float] | None = None,
               cap_se: float = 0.0) -> tuple[KindGroups, dict, dict]:
    """Classifier groups, their curves beside the tasks' (with cascades if `shared`), and
    the questions per group, all from these calibration questions. With `cap_se` > 0 each
    task's curve and its groups' stop at the task's `pipeline.scheduler.cascade.cap_m` at that z: a
    group may plan below its task's dearest m worth buying, not above it (its own curve,
    on 20-300 questions, would tell a real gain from noise even less)."""
    groups = KindGroups.fit(questions)
    tasks = (with_cascades(questions, list(ms), shared, "task", quantiles or QUANTILES)
             if shared is not None else fixed_curves(questions, list(ms), "task"))
    curves = group_curves(questions, ms, groups, tasks, shared, quantiles)
    if cap_se > 0:
        curves = capped(curves, cap_ms(questions, tasks, cap_se))
    return groups, curves, group_sizes(questions, groups)


def planned_right(held: Sequence, groups: KindGroups, curves: Mapping, per_row: float,
                  shared: Mapping[int, int], cap: bool = True) -> int | None:
    """Right answers of the plan by group for `held` within per_row x rows, replayed behind a
    ledger (escalations capped at the plan's escalation budget if `cap`); None if the
    quota cannot pay the cheapest m."""
    rows = dict(Counter(groups.group(q.task, q.text) for q in held))
    quota = round(per_row * len(held))
    try:
        p = plan(rows, curves, Quota(flops=quota))
    except InfeasibleQuota:
        return None
    pot = escalation_budget(p, curves) if cap else None
    out = replay(held, GroupedPolicy(groups, p.policy()), shared, quota, "task", pot)
    return sum(o is not None and o.correct for o in out)


def shrinkage_folds(questions: Sequence, ms: Sequence[int],
                    shared: Mapping[int, int] | None = None,
                    quantiles: Sequence[float] | None = None, seed: int = 0,
                    cap_se: float = 0.0) -> list[tuple]:
    """The two cross-validation folds `choose_shrinkage` scores on: halves of the
    calibration questions stratified by task and kind, each as (held-out half, and groups,
    curves, sizes fitted on the other; with cascades if `shared`, capped at `cap_se`)."""
    a, b = split_halves(questions, seed)
    return [(held, *fit_groups(fit, ms, shared, quantiles, cap_se))
            for fit, held in ((a, b), (b, a))]


def choose_shrinkage(folds: Sequence[tuple], per_row: float, shared: Mapping[int, int],
                     alphas: Sequence[float] = SHRINKAGE, cap: bool = True) -> tuple[float, dict]:
    """The shrinkage for a job of `per_row` FLOPs per row, by two-fold cross-validation on
    the calibration (`shrinkage_folds`): on each fold plan the held-out half's rows with
    each alpha within per_row x rows, replay, count right answers. The alpha with the most
    over both folds; among equals, the one whose curves predict the held-out answers best
    (`squared_error`), then the larger. Returns it and, per alpha, (right answers or None
    where a fold's quota was infeasible, squared error); alpha 0 if every one was.

    Except where per_row pays every row its task's best m in both folds (`saturated`):
    there the task curves (alpha = inf, no scores). The quota then buys nothing a task's
    best m does not, and a group's own best-looking m is mostly a noisy curve's winner's
    curse: in `python -m bench.scheduler` the per-kind plans fell 0.2-0.5 points below m = 32 at
    such quotas, and the rule moved them to 0.0-0.3 below without changing any tighter
    quota."""
    right: dict[float, int | None] = dict.fromkeys(alphas, 0)
    error = dict.fromkeys(alphas, 0.0)
    if math.inf in alphas and folds and all(
            saturated(held, curves, per_row) for held, _, curves, _ in folds):
        return math.inf, {}
    for held, groups, curves, sizes in folds:
        for x in alphas:
            cs = shrunk(curves, sizes, x)
            got = planned_right(held, groups, cs, per_row, shared, cap)
            right[x] = None if got is None or right[x] is None else right[x] + got
            error[x] += squared_error(held, groups, cs)
    ok = {x: n for x, n in right.items() if n is not None}
    best = max(ok, key=lambda x: (ok[x], -round(error[x], 9), x)) if ok else 0.0
    return best, {x: (right[x], error[x]) for x in alphas}


def saturated(held: Sequence, curves: Mapping, per_row: float) -> bool:
    """Whether per_row x rows pays every row of `held` its task's best fixed m (the most
    accurate on its task's curve; the cheapest among equals)."""
    need = 0
    for task, n in Counter(q.task for q in held).items():
        c = curves[task]
        top = max(c.accuracy)
        need += n * min(f for a, f in zip(c.accuracy, c.cost, strict=True) if a == top)
    return need <= per_row * len(held)


def squared_error(held: Sequence, groups: KindGroups, curves: Mapping) -> float:
    """Sum over the held-out questions and each m of (right or not - the accuracy their
    group's curve predicts)^2 (the Brier score, unnormalised)."""
    total = 0.0
    for q in held:
        c = curves[groups.group(q.task, q.text)]
        total += sum((q.correct[m] - a) ** 2 for m, a in zip(c.ms, c.accuracy, strict=True))
    return total


@dataclass
class GroupedPolicy(TokenPolicy):
    """A per-task `TokenPolicy` asked by each row's group instead of its task."""

    groups: KindGroups
    inner: TokenPolicy  # PlanPolicy, RemotePacer, ...: choose(groups, questions)

    def bind(self, num_queries: int) -> GroupedPolicy:
        self.inner = self.inner.bind(num_queries)
        return self

    def check(self, num_queries: int) -> None:
        self.inner.check(num_queries)

    def choose(self, tasks: Sequence[str], questions: Sequence[str]) -> list[Choice]:
        return self.inner.choose(self.groups.of_rows(tasks, questions), questions)

    def skipped(self, tasks: Sequence[str], questions: Sequence[str | None] = ()) -> None:
        qs = list(questions) or [None] * len(tasks)
        self.inner.skipped(self.groups.of_rows(tasks, qs))
