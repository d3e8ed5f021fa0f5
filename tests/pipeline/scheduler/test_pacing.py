"""Pacing (pipeline/scheduler/pacing.py): re-planning on the quota left as rows arrive.

Rows are replayed behind a real `Ledger` (pipeline.scheduler.cascade.replay, batch by batch) with
synthetic questions whose FLOPs at each m are the curve's, or a multiple of them (cost
drift); a static plan made for the estimate is the baseline."""

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.scheduler.cascade import Question, replay, summary
from pipeline.scheduler.ledger import Ledger, LedgerClient, MeasuredRate, charge_us
from pipeline.scheduler.pacing import Pacer, measured_left
from pipeline.scheduler.plan import plan
from pipeline.scheduler.quality import QualityCurve
from pipeline.scheduler.quota import Quota

MS = (1, 4, 16)
CURVES = {"a": QualityCurve("a", MS, (0.5, 0.7, 0.8), (10, 20, 50)),
          "b": QualityCurve("b", MS, (0.3, 0.6, 0.9), (5, 30, 100))}


def questions(rows: dict[str, int], seed: int = 0, scale: float = 1.0) -> list[Question]:
    """`rows[t]` questions of task t in a seeded random order; FLOPs = scale x the curve's."""
    rng = random.Random(seed)
    qs = [Question(f"{t}{i}", t, t,
                   {m: rng.random() < a for m, a in zip(MS, c.accuracy, strict=True)},
                   {m: 0.0 for m in MS},
                   {m: round(scale * f) for m, f in zip(MS, c.cost, strict=True)})
          for t, c in CURVES.items() for i in range(rows.get(t, 0))]
    rng.shuffle(qs)
    return qs


def paced(qs, quota: int, estimate: dict, batch: int, error: float = 0.0, every: int = 0):
    ledger = Ledger(quota)
    pacer = Pacer(CURVES, quota, estimate, lambda: ledger.spent + ledger.reserved,
                  error=error, every=every)
    out = replay(qs, pacer, {m: 0 for m in MS}, quota, batch=batch, ledger=ledger)
    return summary(out), ledger, pacer


def static(qs, quota: int, estimate: dict):
    p = plan(estimate, CURVES, Quota(flops=quota))
    return summary(replay(qs, p.policy(), {m: 0 for m in MS}, quota))


def cheapest_cost(rows: dict[str, int]) -> int:
    return sum(n * CURVES[t].cheapest for t, n in rows.items())


@settings(max_examples=150, deadline=None)
@given(na=st.integers(0, 50), nb=st.integers(1, 50), factor=st.floats(0.5, 2.0),
       error=st.sampled_from([0.0, 0.25, 0.5]), batch=st.integers(1, 20),
       budget=st.floats(0.5, 6.0), seed=st.integers(0, 10))
def test_pacing_never_overspends_and_answers_every_row_an_estimate_within_error_allows(
        na, nb, factor, error, batch, budget, seed):
    """Any estimate: spend <= Q. When the true rows of each task are at most the estimate
    times (1 + error) and Q pays the cheapest m on all of them, no row is refused."""
    true = {"a": na, "b": nb}
    estimate = {t: max(1, round(factor * n)) for t, n in true.items()}
    quota = round(budget * cheapest_cost(true))
    s, ledger, _ = paced(questions(true, seed), quota, estimate, batch, error)
    assert ledger.spent == s["spend"] <= quota and ledger.reserved == 0
    covered = all(true[t] <= -(-estimate[t] * (1 + error) // 1) for t in true)
    if covered and quota >= cheapest_cost(true):
        assert s["unanswered"] == 0


def test_an_under_estimate_within_the_error_bound_answers_every_row():
    """The corpus holds 25% more rows than estimated. A plan made for the estimate spends
    the quota early and the ledger refuses the last rows; the pacer with error=0.25 keeps
    the cheapest m paid for the rows beyond the estimate and answers all of them, still
    spending nearly all of Q."""
    true, estimate = {"a": 100, "b": 100}, {"a": 80, "b": 80}
    qs, quota = questions(true), 6000
    fixed = static(qs, quota, estimate)
    s, _, pacer = paced(qs, quota, estimate, batch=8, error=0.25)
    assert fixed["unanswered"] >= 20 and s["unanswered"] == 0
    assert 0.95 * quota <= s["spend"] <= quota and pacer.plans == 25


def test_cheaper_rows_than_calibrated_leave_no_quota_unused():
    """Rows cost 70% of what the curves say (shorter answers than in calibration). The
    static plan spends ~70% of Q; the pacer re-plans on the real spend and uses >= 95%,
    with more rows at the dearer m and a higher expected accuracy."""
    true = {"a": 100, "b": 100}
    qs, quota = questions(true, scale=0.7), 5000
    fixed = static(qs, quota, true)
    s, _, _ = paced(qs, quota, true, batch=10)
    assert fixed["spend"] <= 0.72 * quota and s["spend"] >= 0.95 * quota
    assert s["unanswered"] == 0 and s["spend"] <= quota


def test_dearer_rows_than_calibrated_are_downgraded_instead_of_refused():
    """Rows cost 30% more than the curves say: the static plan runs out and leaves rows
    unanswered; the pacer moves later rows to cheaper m and answers every one."""
    true = {"a": 100, "b": 100}
    qs, quota = questions(true, scale=1.3), 5000
    fixed = static(qs, quota, true)
    s, _, _ = paced(qs, quota, true, batch=10)
    assert fixed["unanswered"] > 0 and s["unanswered"] == 0 and s["spend"] <= quota


def test_replans_follow_every_and_unknown_tasks_fail():
    import pytest

    ledger = Ledger(10_000)
    pacer = Pacer(CURVES, 10_000, {"a": 50}, lambda: ledger.spent, every=20)
    for _ in range(5):
        pacer.choose(["a"] * 10, [""] * 10)
    assert pacer.plans == 3 and pacer.seen == Counter(a=50)  # at rows 0, 20, 40
    pacer.choose(["b"], [""])  # a task the estimate missed: planned at once
    assert pacer.plans == 4
    with pytest.raises(ValueError, match="task 'c' has no quality curve"):
        pacer.choose(["c"], [""])


def test_a_ledger_of_measured_time_is_paced_at_the_flop_rate_really_measured():
    """quota.measured: the ledger counts microseconds, rows reserve their FLOPs at the rate
    their engine last measured (x1.5), and the estimate of the FLOP/s that the plan was
    made with is wrong. Rows 50% slower than estimated: the static plan runs out of time
    and the ledger refuses rows; the pacer re-plans on the time left at the FLOP/s it
    reads off the ledger and answers every row, using most of Q. Rows 30% faster: the
    static plan leaves 30% of Q unused, the pacer spends it on dearer m."""
    true, prior, quota = {"a": 100, "b": 100}, 1e-3, 5.0  # seconds per FLOP, seconds
    qs = questions(true)
    for slower in (1.5, 0.7):
        fixed, fixed_ledger = timed(qs, plan(true, CURVES, Quota(seconds=quota,
                                    flops_per_second=1 / prior)).policy(), quota, prior, slower)
        ledger = Ledger(int(quota * 1e6), unit="us")
        pacer = Pacer(CURVES, ledger.quota, true, lambda: 0,
                      time_left=lambda led=ledger: measured_left(led.totals(), 1 / prior))
        paced, _ = timed(qs, pacer, quota, prior, slower, ledger)
        assert all(o is not None for o in paced) and ledger.spent <= ledger.quota
        assert ledger.spent >= 0.9 * ledger.quota and ledger.overrun == 0
        if slower > 1:
            assert sum(o is None for o in fixed) >= 20
        else:
            assert fixed_ledger.spent <= 0.72 * ledger.quota
            assert sum(m for m, _ in paced) > sum(m for m, _ in fixed)


def timed(qs, policy, quota: float, prior: float, slower: float, ledger=None, batch=10):
    """Replay behind a ledger of microseconds: a row reserves its FLOPs x the rate measured
    on the last batch (the prior before) x 1.5 and takes FLOPs x prior x `slower` seconds.
    Returns (m, right) per row, None where refused, and the ledger."""
    ledger = ledger or Ledger(int(quota * 1e6), unit="us")
    rate = MeasuredRate(prior, margin=1.5, window=1)
    out = []
    for i in range(0, len(qs), batch):
        chunk = qs[i: i + batch]
        choices = policy.choose([q.task for q in chunk], [q.text for q in chunk])
        flops = seconds = 0
        for q, m in zip(chunk, choices, strict=True):
            f = q.flops[m]
            if not ledger.reserve(q.id, rate.reserve(f), f):
                out.append(None)
                continue
            ledger.commit(q.id, charge_us(f * prior * slower), f)
            out.append((m, q.correct[m]))
            flops, seconds = flops + f, seconds + f * prior * slower
        rate.observe(flops, seconds)
    return out, ledger



def batched(qs, pacer, client, prior: float, batch: int):
    """As an engine does, through a `LedgerClient`: a batch reserves every row's hold
    first (its FLOPs at the rate measured so far x 1.5), then runs and commits; each row
    takes FLOPs x prior seconds. Returns (m, right) per row, None where refused."""
    out = []
    for i in range(0, len(qs), batch):
        chunk = qs[i: i + batch]
        choices = pacer.choose([q.task for q in chunk], [q.text for q in chunk])
        keys, ok = client.reserve([q.id for q in chunk],
                                  [q.flops[m] for q, m in zip(chunk, choices, strict=True)])
        held = [(k, q, m) for k, g, q, m in zip(keys, ok, chunk, choices, strict=True) if g]
        out += [(m, q.correct[m]) if g else None
                for g, q, m in zip(ok, chunk, choices, strict=True)]
        client.commit([k for k, _, _ in held], [q.flops[m] for _, q, m in held],
                      [q.flops[m] * prior for _, q, m in held])
    return out


def test_the_last_batch_of_a_measured_quota_is_held_without_the_margin():
    """An engine holds a whole batch, each row at 1.5x its time, before it runs; a pacer
    plans the quota to its end (one row spare). Holding only at the margin, the holds of
    the last batch do not fit and its last rows are refused, although their time does;
    asking again without the margin (what `LedgerClient` does), every row is answered,
    spend stays within Q and most of it is spent."""
    true, prior, batch = {"a": 100, "b": 100}, 1e-3, 20
    qs = questions(true)
    for mult in (1.5, 2.5, 4.0):
        quota = mult * cheapest_cost(true) * prior  # seconds

        def run(margin_only: bool, quota=quota):
            ledger = Ledger(int(quota * 1e6), unit="us")
            pacer = Pacer(CURVES, ledger.quota, true, lambda: 0,
                          time_left=lambda led=ledger: measured_left(led.totals(), 1 / prior))
            client = LedgerClient(ledger, MeasuredRate(prior, margin=1.5), retry=not margin_only)
            return batched(qs, pacer, client, prior, batch), ledger

        at_margin, _ = run(True)
        assert sum(o is None for o in at_margin) >= 3  # the end of the last batch
        assert all(o is not None for o in at_margin[:-batch])
        out, ledger = run(False)
        assert all(o is not None for o in out)
        assert ledger.spent + ledger.overrun <= ledger.quota
        assert ledger.spent >= 0.95 * ledger.quota


@pytest.mark.parametrize("room", [1.5, 2.5, 4.0])
def test_an_exact_count_needs_no_tail(room):
    """With the rows counted (the estimate exact, as in `mqt annotate`), a tail of 0.1
    plans the last tenth of each task's rows as if more were to come and leaves quota
    unspent; with tail = 0 the pacer spends nearly all of Q, never more, and answers at
    least as many rows right. 310 rows in batches of 16, Q = `room` x the cheapest m's
    time."""
    true, prior, batch = {"a": 214, "b": 96}, 1e-3, 16
    qs = questions(true)
    quota = room * cheapest_cost(true) * prior
    results = {}
    for tail in (0.1, 0.0):
        ledger = Ledger(int(quota * 1e6), unit="us")
        pacer = Pacer(CURVES, ledger.quota, true, lambda: 0, tail=tail,
                      time_left=lambda led=ledger: measured_left(led.totals(), 1 / prior))
        out = batched(qs, pacer, LedgerClient(ledger, MeasuredRate(prior)), prior, batch)
        assert all(o is not None for o in out) and ledger.spent <= ledger.quota
        results[tail] = (ledger.spent / ledger.quota, sum(o[1] for o in out))
    assert results[0.0][0] >= 0.99 and results[0.1][0] <= results[0.0][0] - 0.01
    assert results[0.0][1] >= results[0.1][1]
    with pytest.raises(ValueError, match="tail must be in"):
        Pacer(CURVES, 1, true, lambda: 0, tail=-0.1)


@pytest.mark.parametrize("earlier", [0.2, 0.5])
def test_a_resumed_job_is_paced_like_a_fresh_one_on_the_quota_left(earlier):
    """A rerun after a crash: the job's ledger starts with the killed run's spend (here a
    share `earlier` of Q, rows whose answers were lost among them). Paced with that spend
    as its `base`, the rows left get exactly the m a fresh job with the quota left gets.
    Without it the drift ratio took the earlier spend for this run's rows costing up to 4x
    their plan and put the rows left on cheaper m, leaving quota unused (in a killed and
    resumed `mqt annotate` of 300 rows, m = 1 on 140-165 and 92.7-93.7% of Q spent)."""
    true = {"a": 214, "b": 96}
    qs = questions(true)
    left = int(2.5 * cheapest_cost(true))
    spent = int(earlier * left / (1 - earlier))

    def run(before: int, base: int):
        ledger = Ledger(left + before)
        ledger.reserve("killed run", before)
        ledger.commit("killed run", before)
        pacer = Pacer(CURVES, ledger.quota, true, lambda: ledger.spent + ledger.reserved,
                      tail=0.0, base=base)
        out = replay(qs, pacer, {m: 0 for m in MS}, ledger.quota, batch=16, ledger=ledger)
        return out, (ledger.spent - before) / left

    fresh, resumed, unbased = run(0, 0), run(spent, spent), run(spent, 0)
    assert resumed == fresh  # the same m on every row, the same share of the quota left
    assert fresh[1] >= 0.97 and all(o is not None for o in fresh[0])
    assert unbased[1] < 0.97  # what the base is for
