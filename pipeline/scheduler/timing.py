"""Seconds per row on the job's accelerators: an affine time model, fitted by `mqt profile`.

A quota in measured accelerator-seconds is planned before any row has run. Planned at one
FLOP/s for every m, the plan misprices the small m: a row's time is not proportional to its
FLOPs. Each model call has work that does not grow with m (the decode loop's steps, kernel
launches, Python), so on `mqt-smol` on 2 CPU cores the FLOP/s reached is 48-50 G at m = 1-4
and 64-69 G at m = 32-64 (docs/scheduler.md). `TimeModel` says how long a row takes as

    seconds(task, flops) = seconds_per_flop x flops + seconds_per_call[task] x calls

(`calls`: 1 for an answer, 2 for an escalated cascade row), fitted by least squares on the
mean seconds per row that `mqt profile` measured at several m per task, in batches of the
job's size, on the machine the job will run on. With `quota.time_profile=` a measured job
plans in the model's seconds; while it runs, the ledger counts the time each row really
took, and the FLOPs behind it are replaced by the model's microseconds for that row
(`units`), so pacing re-plans on the ratio of measured time to modelled time: a profile
from a slower or faster machine is corrected as the job goes, only its shape across m is
trusted. Pure Python, no Ray, no torch.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.scheduler.quality import QualityCurve, task_of

UNITS_PER_SECOND = 1_000_000  # the plan and the ledger count modelled time in microseconds


@dataclass(frozen=True)
class TimeModel:
    """Seconds a row takes: `seconds_per_flop` x its FLOPs + its task's `seconds_per_call`
    for each model call it needs; where and how it was measured beside."""

    seconds_per_flop: float
    seconds_per_call: Mapping[str, float]
    device: str = ""
    batch_size: int = 0
    # what it was fitted on: {"task", "m", "flops", "seconds", "rows"} per (task, m), the
    # means per row measured (seconds: the median over the profile's repeats)
    points: tuple = ()

    def __post_init__(self):
        if not (math.isfinite(self.seconds_per_flop) and self.seconds_per_flop >= 0):
            raise ValueError(f"time model: seconds_per_flop must be >= 0, got "
                             f"{self.seconds_per_flop!r}")
        if not self.seconds_per_call:
            raise ValueError("time model: no task has a time (seconds_per_call is empty)")
        if not self.seconds_per_flop and not any(self.seconds_per_call.values()):
            raise ValueError("time model: every row would take no time (all coefficients 0)")
        for task, s in self.seconds_per_call.items():
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"time model: seconds_per_call[{task!r}] must be >= 0, "
                                 f"got {s!r}")

    def per_call(self, group: str) -> float:
        task = task_of(group)
        if task not in self.seconds_per_call:
            raise KeyError(f"the time profile has no time for task {task!r} (it has "
                           f"{sorted(self.seconds_per_call)}); run `mqt profile` on rows "
                           "of that task")
        return self.seconds_per_call[task]

    def seconds(self, group: str, flops: float, calls: float = 1) -> float:
        return self.seconds_per_flop * flops + self.per_call(group) * calls

    def units(self, group: str, flops: float, calls: float = 1) -> int:
        """The modelled time in whole microseconds, rounded up."""
        return math.ceil(self.seconds(group, flops, calls) * UNITS_PER_SECOND)

    def flops_for(self, seconds: float) -> float:
        """The FLOPs a row of `seconds` does, at the mean per-call time over the tasks (to
        put a per-row time budget on a FLOPs scale, e.g. for the per-kind shrinkage)."""
        mean_call = sum(self.seconds_per_call.values()) / len(self.seconds_per_call)
        if self.seconds_per_flop == 0:  # time does not grow with FLOPs: any m fits as well
            return math.inf
        return max(0.0, (seconds - mean_call) / self.seconds_per_flop)

    def timed(self, curves: Mapping[str, QualityCurve],
              shared: Mapping[int, int] | None = None) -> dict[str, QualityCurve]:
        """The curves with their costs in modelled microseconds per row instead of FLOPs.
        A cascade's expected FLOPs are cost(m1) + p x (cost(m2) - shared[m1]); its time
        adds p calls, p recovered from those FLOPs (`shared`: per m1, what an escalation
        reuses, pipeline.scheduler.cascade.shared_flops; needed when a curve has cascades)."""
        out = {}
        for group, c in curves.items():
            cascades = []
            for casc, acc, f in c.cascades:
                if shared is None:
                    raise ValueError("time model: pricing cascades needs what an escalation "
                                     "reuses (shared FLOPs per m1)")
                f1 = c.cost[c.ms.index(casc.m1)]
                extra = c.cost[c.ms.index(casc.m2)] - shared[casc.m1]
                p = min(1.0, max(0.0, (f - f1) / extra)) if extra > 0 else 0.0
                cascades.append((casc, acc, self.units(group, f, 1 + p)))
            out[group] = replace(c, cost=tuple(self.units(group, f) for f in c.cost),
                                 cascades=tuple(cascades))
        return out

    def to_json(self) -> dict:
        d = asdict(self)
        d["seconds_per_call"] = dict(self.seconds_per_call)
        d["points"] = list(self.points)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TimeModel:
        try:
            d = json.loads(Path(path).read_text())
            return cls(float(d["seconds_per_flop"]),
                       {str(t): float(s) for t, s in d["seconds_per_call"].items()},
                       str(d.get("device", "")), int(d.get("batch_size", 0)),
                       tuple(d.get("points", ())))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a time profile written by `mqt profile` "
                             f"({type(e).__name__}: {e})") from None


def fit(points: Iterable[Mapping], device: str = "", batch_size: int = 0) -> TimeModel:
    """Least squares of seconds = a x flops + b[task] over the (task, m) points (mean seconds
    and FLOPs per row), with a >= 0 and every b >= 0 (no row takes negative time): the exact
    non-negative least squares, found by solving the unconstrained problem on every subset
    of the coefficients and keeping the best one whose values are all >= 0 (a handful of
    tasks: at most a few dozen subsets)."""
    pts = [dict(p) for p in points]
    tasks = sorted({p["task"] for p in pts})
    if len(pts) < 2:
        raise ValueError("time profile: two or more (task, m) points are needed")
    x = np.array([[p["flops"] / 1e9] + [float(p["task"] == t) for t in tasks] for p in pts])
    y = np.array([float(p["seconds"]) for p in pts])
    best, best_err = np.zeros(x.shape[1]), float(y @ y)
    for k in range(1, x.shape[1] + 1):
        for cols in itertools.combinations(range(x.shape[1]), k):
            coef = np.linalg.lstsq(x[:, cols], y, rcond=None)[0]
            if (coef < 0).any():
                continue
            full = np.zeros(x.shape[1])
            full[list(cols)] = coef
            err = float(((x @ full - y) ** 2).sum())
            if err < best_err - 1e-18:
                best, best_err = full, err
    return TimeModel(float(best[0]) / 1e9, {t: float(b) for t, b in zip(tasks, best[1:],
                                                                         strict=True)},
                     device, batch_size, tuple(pts))
