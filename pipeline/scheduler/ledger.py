"""The budget ledger: every FLOP a job spends is reserved first and committed after.

Protocol for an engine, per row (or per group of rows) with a stable key such as the row id:

    if ledger.reserve(key, upper_bound_flops):   # before spending
        ... run the model ...
        ledger.commit(key, actual_flops)          # after; frees what was not used
    else:
        ... skip the row (refused: the quota is spent, or the key was already paid) ...

The upper bound comes from the cost model at the most new tokens the task allows; the actual
from the tokens really generated. Rules:

- `reserve` refuses when spent + reserved + overrun + flops > quota, so **spent + reserved
  <= quota always** (overrun is 0 when bounds are upper bounds, as FLOP bounds are; measured
  time past a reservation is counted against what later reservations may take). It also
  refuses a key that is already committed (`is_committed` tells the two refusals apart): a
  row is paid once, and a retried or resumed row must not run again.
  Reserving a key that holds a reservation replaces it if the new amount fits, else keeps it.
- `commit(key, actual)` charges min(actual, reserved) and frees the rest. Charging more than
  the reserve would break the guarantee, so an actual above it is charged at the reserve and
  the excess is added to `overrun`: a caller whose bound was not an upper bound shows there.
  Committing a committed key is a no-op (idempotent); committing a key never reserved is an
  error. `release(key)` frees an open reservation (the row failed before spending).
- With `state_path`, commits survive a crash: each is in the journal before `commit`
  (`commit_many`) returns. A local file (`FileStore`): appended to `<state_path>.journal` as
  one JSON line and flushed to the OS (`fsync=True` also syncs it to disk, for machine
  crashes); every `compact_every` commits, on `save()` and on start, the whole state is
  written to a temp file and moved over `state_path` with `os.replace` (atomic), then the
  journal is emptied. A URL such as s3://bucket/job/ledger.json (`ObjectStore`, beside a
  remote output; object storage cannot append): one journal object per `commit_many` (an
  engine batch) under `<state_path>.journal/`, and the snapshot one object naming the last
  journal object it holds. Reloading reads the snapshot and replays the journal after it;
  replay is idempotent by key, so a crash between those steps, or a torn last journal line
  (dropped: that commit never returned), loses nothing committed. Open reservations are
  not saved: their workers are gone after a restart.

The ledger counts whole units of one kind (`unit`): FLOPs (the default), or microseconds
of measured accelerator time for a quota in measured seconds (`mqt annotate
quota.measured=true`). The unit is saved with the state, and a state is only reloaded in
its own unit. Time cannot be bounded before it is spent: in that unit a reservation is an
estimate (`MeasuredRate`), and time measured beyond it shows in `overrun`.

`LedgerClient` is what an engine holds: the job's ledger behind plain calls, keyed by row id
and attempt, charging FLOPs or (with a `MeasuredRate`) measured time. The ledger itself is
a plain class; pipeline/scheduler/runtime.py runs one per job as a named Ray actor (Ray runs
its methods one at a time, so concurrent engines see one consistent ledger), and the client
calls that actor the same way.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from pyarrow.fs import FileType

from pipeline.scheduler.timing import TimeModel
from pipeline.storage import Location, list_files, locate, read_bytes, scheme_of, write_bytes

REFUSED = "quota: refused by the budget ledger (the job's compute quota is spent)"

UNITS = ("flops", "us")  # what a ledger counts: FLOPs, or microseconds of measured time
WORKS = ("flops", "profiled_us")  # what a ledger of time keeps behind it


class UnitMismatch(ValueError):
    """A saved state counts one unit and the ledger loading it another."""


class WorkMismatch(UnitMismatch):
    """A saved state of measured time keeps another work behind it (FLOPs, or a time
    profile's microseconds) than the ledger loading it."""


def _key(key) -> str:
    if not isinstance(key, str):
        raise TypeError(f"ledger keys are strings (they are saved as JSON), got {key!r}")
    return key


def _flops(x, what: str) -> int:
    """Whole units (FLOPs, or microseconds), rounded up (a reservation is an upper bound)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x < math.inf:
        raise ValueError(f"{what} must be a finite number >= 0 (FLOPs or microseconds), "
                         f"got {x!r}")
    return math.ceil(x)


class Ledger:
    """Spend against a quota in FLOPs (or `unit`), by key; optionally saved to `state_path`."""

    def __init__(self, quota_flops: int, state_path: str | os.PathLike | None = None,
                 compact_every: int = 10_000, fsync: bool = False, unit: str = "flops",
                 work: str = "flops", storage=None):
        if unit not in UNITS:
            raise ValueError(f"ledger unit must be one of {UNITS}, got {unit!r}")
        if work not in WORKS:
            raise ValueError(f"ledger work must be one of {WORKS}, got {work!r}")
        self.quota, self.unit = _flops(quota_flops, "quota_flops"), unit
        self.work = work  # what flops_spent / flops_reserved count
        self.state_path = state_path or None
        self.compact_every = max(1, compact_every)
        self.spent, self.reserved, self.overrun = 0, 0, 0
        # a ledger of time also keeps the FLOPs behind it (of the committed rows, saved,
        # and the FLOP bounds held), from which a pacer reads the FLOP/s really reached
        self.flops_spent, self.flops_reserved = 0, 0
        self._committed: dict[str, int] = {}  # key -> FLOPs charged
        self._holds: dict[str, int] = {}  # key -> FLOPs reserved
        self._hold_flops: dict[str, int] = {}  # key -> FLOP bound behind a hold of time
        self._journaled = 0  # commits in the journal since the last snapshot
        self._pending: list[dict] = []  # commits charged, not yet in the journal
        self._batching = False  # inside commit_many: one journal write for the batch
        # where the state is saved: a local file, or objects for a URL (s3://...; `storage`:
        # pipeline.storage.StorageArgs, how to reach it)
        self._store = state_store(state_path, fsync, storage) if state_path else None
        if self._store is not None:
            self._load()

    # ------------------------------------------------------------------ accounting

    @property
    def remaining(self) -> int:
        """What a new reservation may still take."""
        return max(0, self.quota - self.spent - self.reserved - self.overrun)

    def is_committed(self, key: str) -> bool:
        return key in self._committed

    def reserve(self, key: str, flops, work: float = 0) -> bool:
        """Hold `flops` for `key`; False if it does not fit or `key` is already paid.
        `work`: in a ledger of time, the FLOP bound the hold is for."""
        need, old = _flops(flops, "reserve"), self._holds.get(_key(key), 0)
        # not `remaining` (clamped at 0): an overrun past the quota refuses even a hold of 0
        if key in self._committed or self.spent + self.reserved - old + need + self.overrun \
                > self.quota:
            return False
        self._holds[key] = need
        self.reserved += need - old
        work = _flops(work, "reserve work")
        self.flops_reserved += work - self._hold_flops.get(key, 0)
        self._hold_flops[key] = work
        return True

    def commit(self, key: str, actual_flops, work: float = 0) -> int:
        """Charge min(actual, reserved) to `key` and free its hold; returns the charge.
        `work`: in a ledger of time, the FLOPs the row really computed."""
        actual = _flops(actual_flops, "commit")
        if _key(key) in self._committed:
            return 0  # a retried or resumed row: already paid
        if key not in self._holds:
            raise KeyError(f"commit({key!r}) without a reservation: reserve first")
        hold = self._holds.pop(key)
        self.reserved -= hold
        self.flops_reserved -= self._hold_flops.pop(key, 0)
        self.flops_spent += _flops(work, "commit work")
        charge = min(actual, hold)
        self.overrun += actual - charge
        self._charge(key, charge)
        return charge

    def release(self, key: str) -> None:
        """Free the hold of `key` (no-op if it has none)."""
        self.reserved -= self._holds.pop(key, 0)
        self.flops_reserved -= self._hold_flops.pop(key, 0)

    def reserve_many(self, items: list[tuple]) -> list[bool]:
        """`reserve` for each (key, flops[, work]), in order: one round trip to the actor."""
        return [self.reserve(*item) for item in items]

    def commit_many(self, items: list[tuple]) -> list[int]:
        """`commit` for each item; the batch goes to the journal in one write (one object in
        object storage) before it returns."""
        self._batching = True
        try:
            return [self.commit(*item) for item in items]
        finally:
            self._batching = False
            self._flush()

    def release_many(self, keys: list[str]) -> None:
        for k in keys:
            self.release(k)

    def totals(self) -> dict:
        return {"quota": self.quota, "spent": self.spent, "reserved": self.reserved,
                "remaining": self.remaining, "committed": len(self._committed),
                "overrun": self.overrun, "unit": self.unit, "flops_spent": self.flops_spent,
                "flops_reserved": self.flops_reserved}

    def _charge(self, key: str, charge: int) -> None:
        self._committed[key] = charge
        self.spent += charge
        if self._store is not None:
            self._pending.append({"key": key, "flops": charge, "overrun": self.overrun,
                                  "work": self.flops_spent})
            if not self._batching:
                self._flush()

    # ------------------------------------------------------------------ persistence

    @property
    def journal_path(self):
        """The journal: a local state's file, or the folder of an object store's objects."""
        return self._store.journal

    def _flush(self, compact: bool = True) -> None:
        """The commits charged since the last flush, in the journal before they return;
        then a snapshot every `compact_every` commits (`compact`)."""
        if self._pending:
            self._store.append(self._pending)
            self._journaled += len(self._pending)
            self._pending = []
        if compact and self._journaled >= self.compact_every:
            self.save()

    def save(self) -> None:
        """Write the whole state as one snapshot (atomically), then drop the journal."""
        if self._store is None:
            return
        self._flush(compact=False)  # what a failed commit_many charged before it raised
        self._store.snapshot({"quota": self.quota, "unit": self.unit, "work": self.work,
                              "spent": self.spent, "overrun": self.overrun,
                              "flops_spent": self.flops_spent, "committed": self._committed})
        self._journaled = 0

    def _load(self) -> None:
        state, entries = self._store.load()
        where = self._store.where
        if state is not None:
            if state.get("unit", "flops") != self.unit:  # states before units counted FLOPs
                raise UnitMismatch(f"ledger state {where} counts "
                                   f"{state.get('unit', 'flops')}, not {self.unit}: a job's "
                                   "quota cannot change between FLOPs and measured seconds")
            if state.get("work", "flops") != self.work:  # states before profiles: FLOPs
                raise WorkMismatch(f"ledger state {where} keeps "
                                   f"{state.get('work', 'flops')} behind its time, not "
                                   f"{self.work}: a measured job cannot start or stop planning "
                                   "on a time profile between runs (overwrite=true starts "
                                   "afresh)")
            self._committed = {k: int(v) for k, v in state["committed"].items()}
            self.overrun = int(state.get("overrun", 0))
            self.flops_spent = int(state.get("flops_spent", 0))
        for entry in entries:
            self._committed.setdefault(entry["key"], int(entry["flops"]))
            self.overrun = max(self.overrun, int(entry.get("overrun", 0)))  # running totals
            self.flops_spent = max(self.flops_spent, int(entry.get("work", 0)))
        self.spent = sum(self._committed.values())
        if self.spent > self.quota:
            raise ValueError(f"ledger state {where} has spent {self.spent} "
                             f"{self.unit}, more than its quota {self.quota}")
        self.save()  # start from a clean snapshot: a torn journal line must not glue to the next


def _parse_lines(text: str) -> list[dict]:
    """Journal lines up to the first torn one (the process died mid-write: that commit
    never returned)."""
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def _lines(entries: list[dict]) -> str:
    return "".join(json.dumps(e) + "\n" for e in entries)


class FileStore:
    """A ledger's state in a local file: `<path>` (snapshot) and `<path>.journal` (one JSON
    line per commit, flushed to the OS before the commit returns; `fsync` also syncs it)."""

    def __init__(self, path: str | os.PathLike, fsync: bool = False):
        self.path, self.fsync = Path(path), fsync
        self.journal = self.path.with_name(self.path.name + ".journal")
        self.where = str(self.path)
        self._file = None  # the open journal, appended to by commits

    def exists(self) -> bool:
        return self.path.exists() or self.journal.exists()

    def append(self, entries: list[dict]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.journal, "a")  # closed by snapshot()
        self._file.write(_lines(entries))
        self._file.flush()  # in the OS before commit returns: survives a process crash
        if self.fsync:  # and on disk: survives a machine crash too, at a cost per commit
            os.fsync(self._file.fileno())

    def snapshot(self, state: dict) -> None:
        """Temp file + os.replace (atomic), then the journal emptied."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)
        if self._file is not None:
            self._file.close()
            self._file = None
        self.journal.unlink(missing_ok=True)  # its commits are in the snapshot now

    def load(self) -> tuple[dict | None, list[dict]]:
        state = json.loads(self.path.read_text()) if self.path.exists() else None
        return state, _parse_lines(self.journal.read_text()) if self.journal.exists() else []

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.journal.unlink(missing_ok=True)


class ObjectStore:
    """A ledger's state in object storage (s3://, or any URL pipeline.storage reaches),
    which cannot append: the snapshot is one object, `<url>`, and the journal a folder of
    objects, `<url>.journal/<seq>.jsonl`, one per flush (a `commit_many` call, the commits of
    one engine batch), each written whole before the commits return. A snapshot records the
    last journal object it holds (`journal_seq`); those are then deleted. Loading reads the
    snapshot and replays the journal objects after it, in order; replay is idempotent by
    key, so a crash between a snapshot and the deletions loses nothing. The ledger actor is
    the only writer (one named actor per job)."""

    def __init__(self, url: str, storage=None):
        self.loc = locate(url, storage)
        self.journal = locate(self.loc.uri + ".journal", storage)
        self.where = self.loc.uri
        self.seq = 0

    def _journal_objects(self) -> list[tuple[int, Location]]:
        """(seq, location) of the journal's objects, in order."""
        found = []
        for path in list_files(self.journal):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".jsonl") and name[:-6].isdigit():
                found.append((int(name[:-6]), self.journal.join(name)))
        return sorted(found, key=lambda x: x[0])

    def exists(self) -> bool:
        return self.loc.info().type != FileType.NotFound or bool(self._journal_objects())

    def append(self, entries: list[dict]) -> None:
        self.seq += 1
        write_bytes(self.journal.join(f"{self.seq:012d}.jsonl"), _lines(entries).encode())

    def snapshot(self, state: dict) -> None:
        write_bytes(self.loc, json.dumps({**state, "journal_seq": self.seq}).encode())
        for seq, obj in self._journal_objects():
            if seq <= self.seq:
                obj.fs.delete_file(obj.path)

    def load(self) -> tuple[dict | None, list[dict]]:
        try:
            state = json.loads(read_bytes(self.loc))
        except FileNotFoundError:
            state = None
        done = int(state.get("journal_seq", 0)) if state else 0
        entries, self.seq = [], done
        for seq, obj in self._journal_objects():
            self.seq = max(self.seq, seq)
            if seq > done:
                entries += _parse_lines(read_bytes(obj).decode())
        return state, entries

    def clear(self) -> None:
        if self.loc.info().type != FileType.NotFound:
            self.loc.fs.delete_file(self.loc.path)
        for _, obj in self._journal_objects():
            obj.fs.delete_file(obj.path)


def state_store(state_path: str | os.PathLike, fsync: bool = False, storage=None):
    """Where a ledger's state lives: a local file, or an object store for a URL."""
    text = os.fspath(state_path)
    if scheme_of(text) in ("", "file"):
        return FileStore(text.split("://", 1)[-1], fsync)
    return ObjectStore(text, storage)


def state_exists(state_path: str | os.PathLike, storage=None) -> bool:
    """Whether a ledger saved anything at `state_path`."""
    return state_store(state_path, storage=storage).exists()


def clear_state(state_path: str | os.PathLike, storage=None) -> None:
    """Forget a ledger's saved spend, its snapshot and its journal (a job started afresh:
    `mqt annotate overwrite=true`)."""
    state_store(state_path, storage=storage).clear()


@dataclass
class MeasuredRate:
    """Seconds per FLOP of one engine, learned from its own batches: what it reserves for
    a row in a measured-seconds ledger. Before its first batch it uses the job's estimate
    (1 / quota.flops_per_second); after, the slowest of its last `window` batches, so a
    slow batch (a cold start, a neighbour on the machine) keeps reservations high for a while.
    With a time profile the "FLOPs" are the profile's microseconds (prior 1e-6: the profile
    is right), and the rate learns how much slower or faster than the profile rows run."""

    prior: float  # seconds per FLOP (per unit of work) before any batch
    margin: float = 1.5  # a reservation is this x the bound at the rate
    window: int = 8
    seen: deque = field(init=False)  # seconds per FLOP of the last `window` batches

    def __post_init__(self):
        self.seen = deque(maxlen=self.window)

    @property
    def rate(self) -> float:
        return max(self.seen) if self.seen else self.prior

    def reserve(self, flops: float, margin: float | None = None) -> int:
        """Microseconds to hold for work of `flops` FLOPs (at `margin`, default the rate's)."""
        return math.ceil(flops * self.rate * (self.margin if margin is None else margin) * 1e6)

    def observe(self, flops: float, seconds: float) -> None:
        if flops > 0 and seconds > 0:
            self.seen.append(seconds / flops)


def charge_us(seconds: float) -> int:
    """Measured seconds as the ledger charges them: whole microseconds (rows' seconds are
    written to the microsecond)."""
    return round(seconds * 1e6)


class LedgerClient:
    """What an engine holds: the job's ledger actor behind plain calls (a plain `Ledger`
    works the same in tests without Ray). Keys are row id + a fresh attempt id, so every
    attempt at a row is charged: a block retried after a crash pays again, never past Q.

    Callers give FLOPs (bounds, actual costs) and the seconds they measured; with `rate`
    (a measured-seconds quota) the ledger is charged time: bounds go through the rate, a
    commit charges the measured seconds and teaches the rate, and the ledger keeps the
    FLOPs behind both (its FLOP/s for the pacer). When the holds of a batch at the margin
    are not all granted, they are given back and the batch asks again for its bounds at
    the rate alone: at the end of a quota, holds of a whole batch at 1.5x (an engine
    holds its batch before it runs) would refuse rows whose time still fits. With `time`
    (quota.time_profile) the work behind the time is the profile's microseconds for each
    row (its task's per-call time included), not its FLOPs, and the rate is seconds per
    such microsecond. `accelerators`: what the engine's actor holds (annotate's
    `gpus_per_actor`; 1 without accelerators): a measured second is charged as that many
    accelerator-seconds, so two actors sharing one card (0.5 each) are charged the card's
    seconds once, not twice, and an actor holding two cards twice."""

    def __init__(self, actor, rate: MeasuredRate | None = None, time: TimeModel | None = None,
                 retry: bool = True, accelerators: float = 1.0):
        if time is not None and rate is None:
            raise ValueError("a time profile prices measured time: it needs a MeasuredRate")
        if not accelerators > 0:
            raise ValueError(f"accelerators per actor must be > 0, got {accelerators}")
        self.actor, self.rate, self.time = actor, rate, time
        self.retry = retry  # a refused hold asks again without the margin
        self.accelerators = accelerators

    def _work(self, flops: list[int], tasks: list[str] | None) -> list[int]:
        """What the ledger keeps behind a row's time: its FLOPs, or its modelled time."""
        if self.time is None:
            return list(flops)
        if tasks is None:
            raise ValueError("a ledger priced by a time profile needs each row's task")
        return [self.time.units(t, f) for t, f in zip(tasks, flops, strict=True)]

    def _call(self, method: str, *args):
        if isinstance(self.actor, Ledger):
            return getattr(self.actor, method)(*args)
        import ray  # heavy; only a ledger actor (pipeline/scheduler/runtime.py) needs it

        return ray.get(getattr(self.actor, method).remote(*args))

    def reserve(self, ids: list[str], bounds: list[int],
                tasks: list[str] | None = None) -> tuple[list[str], list[bool]]:
        """Attempt keys and whether each row's upper bound (FLOPs; one model call each, of
        its task in `tasks`) was granted."""
        attempt = uuid.uuid4().hex[:12]
        keys = [f"{i}@{attempt}" for i in ids]
        if self.rate is None:
            return keys, self._call("reserve_many", list(zip(keys, bounds, strict=True)))
        work = self._work(bounds, tasks)
        holds = [(k, self.rate.reserve(w), w) for k, w in zip(keys, work, strict=True)]
        granted = self._call("reserve_many", holds)
        if not all(granted) and self.retry and self.rate.margin > 1:  # the quota's end
            self._call("release_many", [k for k, ok in zip(keys, granted, strict=True) if ok])
            granted = self._call("reserve_many", [(k, self.rate.reserve(w, 1.0), w)
                                                  for k, w in zip(keys, work, strict=True)])
        return keys, granted

    def commit(self, keys: list[str], flops: list[int], seconds: list[float],
               tasks: list[str] | None = None) -> None:
        """Charge what each row cost: its FLOPs, or (measured) its seconds."""
        if self.rate is None:
            self._call("commit_many", list(zip(keys, flops, strict=True)))
            return
        work = self._work(flops, tasks)
        seconds = [s * self.accelerators for s in seconds]  # accelerator-seconds
        self.rate.observe(sum(work), sum(seconds))
        self._call("commit_many", list(zip(keys, map(charge_us, seconds), work, strict=True)))

    def release(self, keys: list[str]) -> None:
        self._call("release_many", keys)
