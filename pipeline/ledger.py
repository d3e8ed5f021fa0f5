"""The budget ledger: every FLOP a job spends is reserved first and committed after.

Protocol for a predictor, per row (or per group of rows) with a stable key such as the row id:

    if ledger.reserve(key, upper_bound_flops):   # before spending
        ... run the model ...
        ledger.commit(key, actual_flops)          # after; frees what was not used
    else:
        ... skip the row (refused: the quota is spent, or the key was already paid) ...

The upper bound comes from the cost model at the most new tokens the task allows; the actual
from the tokens really generated. Rules:

- `reserve` refuses when spent + reserved + flops > quota, so **spent + reserved <= quota
  always**. It also refuses a key that is already committed (`is_committed` tells the two
  refusals apart): a row is paid once, and a retried or resumed row must not run again.
  Reserving a key that holds a reservation replaces it if the new amount fits, else keeps it.
- `commit(key, actual)` charges min(actual, reserved) and frees the rest. Charging more than
  the reserve would break the guarantee, so an actual above it is charged at the reserve and
  the excess is added to `overrun`: a caller whose bound was not an upper bound shows there.
  Committing a committed key is a no-op (idempotent); committing a key never reserved is an
  error. `release(key)` frees an open reservation (the row failed before spending).
- With `state_path`, commits survive a crash: each is appended to `<state_path>.journal` as
  one JSON line and flushed to the OS before `commit` returns (`fsync=True` also syncs it to
  disk, for machine crashes). Every `compact_every` commits, on `save()` and on start, the
  whole state is written to a temp file and moved over `state_path` with `os.replace`
  (atomic), then the journal is emptied. Reloading reads the snapshot and replays the
  journal; replay is idempotent by key, so a crash between those two steps, or a torn last
  journal line (dropped: that commit never returned), loses nothing committed. Open
  reservations are not saved: their workers are gone after a restart.

`get_or_create_ledger(job, quota)` gives one named Ray actor per job; Ray runs its methods
one at a time, so concurrent predictors see one consistent ledger. Ray is imported only there.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"ledger keys are strings (they are saved as JSON), got {key!r}")
    return key


def _flops(x, what: str) -> int:
    """Whole FLOPs, rounded up (a reservation is an upper bound)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x < math.inf:
        raise ValueError(f"{what} must be a finite number of FLOPs >= 0, got {x!r}")
    return math.ceil(x)


class Ledger:
    """Spend against a quota in FLOPs, by key; optionally saved to `state_path`."""

    def __init__(self, quota_flops: int, state_path: str | os.PathLike | None = None,
                 compact_every: int = 10_000, fsync: bool = False):
        self.quota = _flops(quota_flops, "quota_flops")
        self.state_path = Path(state_path) if state_path else None
        self.compact_every, self.fsync = max(1, compact_every), fsync
        self.spent, self.reserved, self.overrun = 0, 0, 0
        self._committed: dict[str, int] = {}  # key -> FLOPs charged
        self._holds: dict[str, int] = {}  # key -> FLOPs reserved
        self._journaled = 0  # commits in the journal since the last snapshot
        self._journal = None  # the open journal file, appended to by commits
        if self.state_path:
            self._load()

    # ------------------------------------------------------------------ accounting

    @property
    def remaining(self) -> int:
        """What a new reservation may still take."""
        return self.quota - self.spent - self.reserved

    def is_committed(self, key: str) -> bool:
        return key in self._committed

    def reserve(self, key: str, flops) -> bool:
        """Hold `flops` for `key`; False if it does not fit or `key` is already paid."""
        need, old = _flops(flops, "reserve"), self._holds.get(_key(key), 0)
        if key in self._committed or self.spent + self.reserved - old + need > self.quota:
            return False
        self._holds[key] = need
        self.reserved += need - old
        return True

    def commit(self, key: str, actual_flops) -> int:
        """Charge min(actual, reserved) to `key` and free its hold; returns the charge."""
        actual = _flops(actual_flops, "commit")
        if _key(key) in self._committed:
            return 0  # a retried or resumed row: already paid
        if key not in self._holds:
            raise KeyError(f"commit({key!r}) without a reservation: reserve first")
        hold = self._holds.pop(key)
        self.reserved -= hold
        charge = min(actual, hold)
        self.overrun += actual - charge
        self._charge(key, charge)
        return charge

    def release(self, key: str) -> None:
        """Free the hold of `key` (no-op if it has none)."""
        self.reserved -= self._holds.pop(key, 0)

    def reserve_many(self, items: list[tuple[str, float]]) -> list[bool]:
        """`reserve` for each (key, flops), in order: one round trip to the actor."""
        return [self.reserve(k, f) for k, f in items]

    def commit_many(self, items: list[tuple[str, float]]) -> list[int]:
        return [self.commit(k, f) for k, f in items]

    def release_many(self, keys: list[str]) -> None:
        for k in keys:
            self.release(k)

    def totals(self) -> dict:
        return {"quota": self.quota, "spent": self.spent, "reserved": self.reserved,
                "remaining": self.remaining, "committed": len(self._committed),
                "overrun": self.overrun}

    def _charge(self, key: str, charge: int) -> None:
        self._committed[key] = charge
        self.spent += charge
        if self.state_path:
            self._append(key, charge)

    # ------------------------------------------------------------------ persistence

    @property
    def journal_path(self) -> Path:
        return self.state_path.with_name(self.state_path.name + ".journal")

    def _append(self, key: str, charge: int) -> None:
        if self._journal is None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            self._journal = open(self.journal_path, "a")  # closed by save()
        self._journal.write(json.dumps({"key": key, "flops": charge, "overrun": self.overrun})
                            + "\n")
        self._journal.flush()  # in the OS before commit returns: survives a process crash
        if self.fsync:  # and on disk: survives a machine crash too, at a cost per commit
            os.fsync(self._journal.fileno())
        self._journaled += 1
        if self._journaled >= self.compact_every:
            self.save()

    def save(self) -> None:
        """Write the snapshot atomically (temp file + os.replace), then empty the journal."""
        if not self.state_path:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + f".tmp-{os.getpid()}")
        state = {"quota": self.quota, "spent": self.spent, "overrun": self.overrun,
                 "committed": self._committed}
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.journal_path.unlink(missing_ok=True)  # its commits are in the snapshot now
        self._journaled = 0

    def _load(self) -> None:
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            self._committed = {k: int(v) for k, v in state["committed"].items()}
            self.overrun = int(state.get("overrun", 0))
        for entry in self._journal_entries():
            self._committed.setdefault(entry["key"], int(entry["flops"]))
            self.overrun = max(self.overrun, int(entry.get("overrun", 0)))
        self.spent = sum(self._committed.values())
        if self.spent > self.quota:
            raise ValueError(f"ledger state {self.state_path} has spent {self.spent} FLOPs, "
                             f"more than quota_flops={self.quota}")
        self.save()  # start from a clean snapshot: a torn journal line must not glue to the next

    def _journal_entries(self) -> list[dict]:
        if not self.journal_path.exists():
            return []
        entries = []
        for line in self.journal_path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line: that commit never returned
        return entries


# ------------------------------------------------------------------ the Ray actor

_ACTOR_CLASS = None


def ledger_actor_class():
    """`Ledger` as a Ray actor class (made on first use so importing needs no Ray)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        import ray

        _ACTOR_CLASS = ray.remote(num_cpus=0)(_LedgerActor)
    return _ACTOR_CLASS


class _LedgerActor(Ledger):
    """A Ledger whose attributes are reachable as actor methods."""

    def get(self, name: str):
        return getattr(self, name)

    def ping(self) -> bool:
        return True


def ledger_name(job_name: str) -> str:
    return f"mqt-ledger-{job_name}"


def clear_state(state_path: str | os.PathLike) -> None:
    """Forget a ledger's saved spend, its snapshot and its journal (a job started afresh:
    `mqt annotate overwrite=true`)."""
    path = Path(state_path)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".journal").unlink(missing_ok=True)


def get_or_create_ledger(job_name: str, quota_flops: int, state_path: str | None = None,
                         namespace: str | None = None):
    """The job's ledger actor: the running one named after the job, or a new one. A running
    one with another quota is an error (two jobs with one name would share a budget)."""
    import ray

    actor = ledger_actor_class().options(
        name=ledger_name(job_name), namespace=namespace, get_if_exists=True,
        max_concurrency=1,  # one method at a time: reserve/commit never interleave
    ).remote(quota_flops, state_path)
    quota = ray.get(actor.get.remote("quota"))
    if quota != _flops(quota_flops, "quota_flops"):
        raise ValueError(f"ledger {ledger_name(job_name)!r} is running with quota {quota} "
                         f"FLOPs, not {quota_flops}")
    return actor
