"""Compute quotas for an endpoint: so many FLOPs per time window and per caller.

A batch job has one quota for its whole corpus; an endpoint has a stream of requests with no
end, so its quota renews: each caller (an API key, or everyone together) may spend
`per_window` FLOPs in each window of `window_s` seconds, windows aligned to the epoch
(a window of 3600 s runs from one full hour to the next). Each (caller, window) is charged
through a batch job's own `Ledger` (pipeline/scheduler/ledger.py: reserve the request's upper
bound before it runs, commit what it really cost after, release it if it failed), so that
spent + reserved never passes the quota, and concurrent requests cannot overdraw it.

A request offers the m it would be answered at, largest first, each with its upper bound:
a request with its own m (`visual_tokens`, `detail` low or high) offers one; one with
`detail=auto` offers its planned m and every smaller m of its curve. `reserve` grants:

- an `auto` request the largest m whose bound leaves `headroom` such requests payable
  (what is left >= headroom x bound), else its smallest m if that still fits: as a window's
  budget runs low, auto requests step down to smaller m before any request is refused;
- any other request its one m if it fits;
- nothing, with the seconds until the window ends (an HTTP 429 with `Retry-After`).

With `state_dir`, each (caller, window) ledger is saved there (commits journaled, as a batch
job's are), so a restarted endpoint still knows what the window has spent. Callers are named
by a digest of their key, never the key itself. Pure Python; the endpoint runs one of these
behind a Ray Serve deployment that all its replicas call (pipeline/serve/app.py).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.scheduler.ledger import Ledger


@dataclass
class Grant:
    """What `reserve` answers: the m granted (None: refused) and, when refused, the
    seconds until the window ends and the budget renews."""

    m: int | None
    retry_after_s: float = 0.0
    remaining: int = 0  # what the caller's window has left after this reservation


def caller_id(key: str | None) -> str:
    """The name a caller's spend is kept under: a digest of its API key ("all": no key)."""
    if not key:
        return "all"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class WindowLedgers:
    """One `Ledger` per (caller, window) of `window_s` seconds, `per_window` FLOPs each."""

    def __init__(self, per_window: float, window_s: float, headroom: int = 1,
                 state_dir: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time):
        if not per_window > 0 or not math.isfinite(per_window):
            raise ValueError(f"per_window must be a finite number of FLOPs > 0, got {per_window!r}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if headroom < 1:
            raise ValueError(f"headroom must be >= 1, got {headroom!r}")
        self.per_window, self.window_s, self.headroom = math.ceil(per_window), window_s, headroom
        self.state_dir = Path(state_dir) if state_dir else None
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._ledgers: dict[tuple[str, int], Ledger] = {}
        self._held: dict[str, tuple[str, int]] = {}  # request key -> (caller, window)

    def _window(self) -> tuple[int, float]:
        """The current window's number and the seconds until it ends."""
        now = self.clock()
        w = math.floor(now / self.window_s)
        return w, (w + 1) * self.window_s - now

    def _ledger(self, who: str, window: int) -> Ledger:
        key = (who, window)
        if key not in self._ledgers:
            # a window's ledgers are dropped two windows on (requests still running in the
            # last one commit there); their saved states stay on disk
            self._ledgers = {k: v for k, v in self._ledgers.items() if k[1] >= window - 1}
            path = self.state_dir / f"{who}-{window}.json" if self.state_dir else None
            self._ledgers[key] = Ledger(self.per_window, path)
        return self._ledgers[key]

    def reserve(self, who: str, key: str, offers: Sequence[tuple[int, int]],
                auto: bool = False) -> Grant:
        """Reserve the first of `offers` ((m, FLOP bound), largest m first) that the rules in
        the module's docstring grant, under the request's unique `key`."""
        if not offers:
            raise ValueError("a request offers at least one (m, bound)")
        window, left_s = self._window()
        ledger = self._ledger(who, window)
        need = [self.headroom * b if auto else b for _, b in offers]
        if auto:  # the smallest m needs only to fit: no request is refused that fits
            need[-1] = offers[-1][1]
        for (m, bound), n in zip(offers, need, strict=True):
            if ledger.remaining >= n and ledger.reserve(key, bound):
                self._held[key] = (who, window)
                return Grant(m, remaining=ledger.remaining)
        return Grant(None, retry_after_s=left_s, remaining=ledger.remaining)

    def commit(self, key: str, flops: float) -> None:
        """Charge a granted request what it cost (at most its bound; see Ledger.commit)."""
        held = self._held.pop(key, None)
        if held is not None and held in self._ledgers:
            self._ledgers[held].commit(key, flops)

    def release(self, key: str) -> None:
        """Free a granted request's reservation (it failed before spending)."""
        held = self._held.pop(key, None)
        if held is not None and held in self._ledgers:
            self._ledgers[held].release(key)

    def totals(self, who: str | None = None) -> dict:
        """The current window's spend, per caller (or of one caller)."""
        window, left_s = self._window()
        out = {c: {"spent": led.spent, "reserved": led.reserved, "remaining": led.remaining}
               for (c, w), led in self._ledgers.items() if w == window and who in (None, c)}
        return {"window": window, "window_s": self.window_s, "ends_in_s": left_s,
                "per_window": self.per_window, "callers": out}
