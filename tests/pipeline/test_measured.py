"""A quota in measured accelerator-seconds (`quota.measured=true`): the ledger counts the
microseconds rows really take; a row reserves its FLOP bound at the seconds per FLOP its
engine last measured (`MeasuredRate`), and commits the seconds it took. Tiny random
model, plain `Ledger`, no Ray (the job end to end is in test_annotate_quota.py)."""

import math

import pyarrow as pa
import pytest
from test_annotate import image_bytes
from test_annotate_quota import tiny_row_bound

from pipeline.decode import decode_batch
from pipeline.engine import Engine
from pipeline.scheduler.cascade import CascadePolicy
from pipeline.scheduler.ledger import REFUSED, Ledger, LedgerClient, MeasuredRate, charge_us
from pipeline.scheduler.pacing import measured_left
from pipeline.scheduler.policy import Cascade, FixedPolicy

MODEL = {"preset": "tiny", "checkpoint": "none"}


def caption_rows(n: int, start: int = 0) -> pa.Table:
    src = [{"id": str(i), "path": None, "image": image_bytes(i), "task": "caption",
            "question": "", "options": None, "error": None} for i in range(start, start + n)]
    return decode_batch(pa.Table.from_pylist(src), image_size=32)


def test_the_rate_starts_at_the_estimate_then_follows_the_slowest_recent_batch():
    r = MeasuredRate(prior=2e-9, margin=1.5, window=3)
    assert r.reserve(1e9) == 3_000_000  # 1e9 FLOPs x 2e-9 s/FLOP x 1.5, in microseconds
    r.observe(1e9, 0.5)
    assert r.rate == 5e-10 and r.reserve(1e9) == 750_000  # the estimate is forgotten
    r.observe(1e9, 1.0)
    r.observe(0, 3.0)  # no FLOPs (nothing answered): not a rate
    r.observe(2e9, 1.0)
    assert r.rate == 1e-9  # the slowest of the last three
    r.observe(1e9, 0.1)
    r.observe(1e9, 0.1)
    assert r.rate == 5e-10  # 1.0 s/1e9 has left the window of 3
    assert charge_us(0.0123456) == 12_346 and charge_us(2.5) == 2_500_000


def test_a_client_reserves_through_the_rate_and_charges_measured_time():
    ledger = Ledger(10_000_000, unit="us")  # 10 s
    client = LedgerClient(ledger, MeasuredRate(prior=1e-9, margin=2.0), retry=False)
    keys, ok = client.reserve(["a", "b", "c"], [1e9, 2e9, 3e9])  # holds of 2, 4 and 6 s
    assert ok == [True, True, False] and ledger.reserved == 6_000_000
    client.release(keys)
    # a batch not all granted at the margin asks again at the rate alone (1, 2 and 3 s)
    retrying = LedgerClient(ledger, MeasuredRate(prior=1e-9, margin=2.0))
    keys, ok = retrying.reserve(["a", "b", "c"], [1e9, 2e9, 3e9])
    assert ok == [True] * 3 and ledger.reserved == 6_000_000
    more, ok = retrying.reserve(["d", "e"], [5e9, 1e9])  # 4 s left: 10 and 2 s at the margin
    assert ok == [False, True] and ledger.reserved == 7_000_000  # d not even at 5 s
    retrying.release(keys + more)
    keys, ok = client.reserve(["a", "b", "c"], [1e9, 2e9, 3e9])  # again, without retries
    assert ok == [True, True, False]
    client.commit(keys[:2], [1e9, 2e9], [0.25, 3.0])
    assert (ledger.spent, ledger.overrun, ledger.reserved) == (3_250_000, 0, 0)
    assert client.rate.rate == pytest.approx(3.25 / 3e9)  # learned from the batch
    keys, ok = client.reserve(["d"], [1e9])  # 1e9 x 3.25/3e9 x 2 = 2.17 s
    assert ok == [True] and ledger.reserved == math.ceil(1e9 * (3.25 / 3e9) * 2 * 1e6)
    client.commit(keys, [1e9], [5.0])  # took longer than its hold: the rest is overrun
    assert (ledger.spent, ledger.overrun) == (3_250_000 + 2_166_667, 5_000_000 - 2_166_667)


def test_an_actor_on_part_of_a_card_is_charged_its_share_of_each_second():
    """Two actors sharing one accelerator (annotate's gpus_per_actor=0.5) each measure their
    own wall time; charged at half, the card's seconds count once. An actor on two cards is
    charged twice its wall time. The rate learns accelerator-seconds per FLOP."""
    ledger = Ledger(10_000_000, unit="us")
    half = LedgerClient(ledger, MeasuredRate(prior=1e-9), accelerators=0.5)
    keys, ok = half.reserve(["a"], [1e9])  # 1.5 s held: the estimate x the margin
    half.commit(keys, [1e9], [1.0])  # one wall second on half a card
    assert ok == [True] and (ledger.spent, ledger.reserved) == (500_000, 0)
    assert half.rate.rate == pytest.approx(0.5e-9)
    two = LedgerClient(ledger, MeasuredRate(prior=1e-9), accelerators=2)
    keys, _ = two.reserve(["b"], [1e9])
    two.commit(keys, [1e9], [1.0])  # 2 accelerator-seconds against a hold of 1.5
    assert (ledger.spent, ledger.overrun) == (500_000 + 1_500_000, 500_000)
    with pytest.raises(ValueError, match="accelerators per actor must be > 0"):
        LedgerClient(ledger, MeasuredRate(prior=1e-9), accelerators=0)


def test_the_engine_charges_each_row_the_seconds_it_took_and_refuses_past_the_quota():
    """The estimate says a caption row at m = 4 takes one second (its FLOP bound at the
    prior rate); a quota of 2.5 s pays the holds of two rows of the first batch and the
    ledger refuses the other three. The two are charged the seconds they took (far less on
    this tiny model); the three ask once more with the two charged, at the rate the
    engine has just measured, and fit. Every measured microsecond is counted: charged, or
    (a row slower than the rate measured a moment before: timing noise, seen in CI) past
    its hold as overrun. A quota below one hold at the estimate refuses a whole batch:
    nothing ran, so nothing came back for a second ask."""
    bound = tiny_row_bound(4)
    ledger = Ledger(2_500_000, unit="us")
    client = LedgerClient(ledger, MeasuredRate(prior=1 / bound, margin=1.0))
    pred = Engine(MODEL, FixedPolicy(default=4), threads=1, ledger=client)
    out = pred(caption_rows(5)).to_pylist()
    assert all(r["error"] is None for r in out)
    assert ledger.totals()["committed"] == 5
    charged = sum(charge_us(r["seconds"]) for r in out)
    assert ledger.spent + ledger.overrun == charged and ledger.reserved == 0
    assert client.rate.seen and client.rate.rate < 1 / bound  # measured, not the estimate
    assert ledger.spent <= ledger.quota

    small = Ledger(900_000, unit="us")  # 0.9 s: not one row at the estimate's 1 s
    pred.ledger = LedgerClient(small, MeasuredRate(prior=1 / bound, margin=1.0))
    out = pred(caption_rows(3, start=5)).to_pylist()
    assert [r["error"] for r in out] == [REFUSED] * 3
    assert (small.spent, small.reserved, small.totals()["committed"]) == (0, 0, 0)


def test_escalations_are_charged_their_own_measured_time():
    """Every row escalates (threshold +inf): the first attempt and the escalation are two
    ledger entries, and together they are the row's seconds (to a microsecond each)."""
    ledger = Ledger(10**12, unit="us")
    policy = CascadePolicy({"caption": Cascade(2, 8, math.inf)})
    pred = Engine(MODEL, policy, threads=1,
                     ledger=LedgerClient(ledger, MeasuredRate(prior=1e-9)))
    out = pred(caption_rows(4)).to_pylist()
    assert all(r["error"] is None and r["m"] == 8 for r in out)
    assert ledger.totals()["committed"] == 8  # 4 first attempts + 4 escalations
    total = sum(charge_us(r["seconds"]) for r in out)
    assert abs(ledger.spent + ledger.overrun - total) <= len(out)


def test_the_pacer_plans_the_time_left_at_the_flop_rate_the_ledger_measured():
    """A ledger of time keeps the FLOPs behind it; `measured_left` turns the time left
    (quota less spent, held and overrun) into FLOPs at the committed rows' FLOP/s, or at
    the job's estimate before any commit."""
    led = Ledger(10_000_000, unit="us")  # 10 s
    assert measured_left(led.totals(), 2e9) == (0, 10 * 2e9)
    assert led.reserve("a", 2_000_000, 1e9)
    led.commit("a", 1_000_000, 1e9)  # 1e9 FLOPs in 1 s: 1 GFLOP/s
    assert led.reserve("b", 3_000_000, 4e9)  # in flight: 3 s held for a bound of 4e9 FLOPs
    assert measured_left(led.totals(), 2e9) == (5e9, 6 * 1e9)
    led.release("b")
    assert (led.flops_spent, led.flops_reserved) == (1e9, 0)
    assert led.reserve("c", 1_000_000, 1e9)
    led.commit("c", 3_000_000, 1e9)  # 2 s past its hold: overrun, and no longer left
    assert led.overrun == 2_000_000 and measured_left(led.totals(), 2e9) == (2e9, 6 * 0.5e9)
