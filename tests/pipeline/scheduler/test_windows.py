"""Quotas per time window and caller (pipeline/scheduler/windows.py), on a fake clock."""

import pytest

from pipeline.scheduler.windows import WindowLedgers, caller_id


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_fixed_request_is_granted_while_it_fits_then_refused_until_the_window_ends():
    clock = Clock(1000.0)  # window of 60 s: 960..1020
    led = WindowLedgers(100, 60, clock=clock)
    grants = [led.reserve("a", f"r{i}", [(16, 30)]) for i in range(4)]
    assert [g.m for g in grants] == [16, 16, 16, None]
    assert grants[-1].retry_after_s == pytest.approx(20.0)
    for i in range(3):
        led.commit(f"r{i}", 30)
    assert led.totals("a")["callers"]["a"]["spent"] == 90
    clock.t = 1021.0  # the next window: the budget renews
    assert led.reserve("a", "r9", [(16, 30)]).m == 16


def test_callers_have_their_own_budgets():
    led = WindowLedgers(50, 60, clock=Clock())
    assert led.reserve("a", "1", [(4, 50)]).m == 4
    assert led.reserve("a", "2", [(4, 50)]).m is None
    assert led.reserve("b", "3", [(4, 50)]).m == 4


def test_auto_steps_down_before_anything_is_refused():
    led = WindowLedgers(1000, 60, headroom=4, clock=Clock())
    offers = [(64, 100), (16, 40), (4, 20), (1, 10)]  # largest m first
    seen = []
    for i in range(40):
        g = led.reserve("a", f"r{i}", offers, auto=True)
        if g.m is None:
            break
        led.commit(f"r{i}", dict(offers)[g.m])
        seen.append(g.m)
    # 64 while >= 400 is left, then 16 while >= 160, 4 while >= 80, then 1 to the end
    assert seen[:7] == [64] * 7 and seen[7] == 16
    assert seen == sorted(seen, reverse=True) and seen[-1] == 1
    assert sum(dict(offers)[m] for m in seen) == 1000  # the whole budget, never more
    # a fixed request at the cheapest m was refused only once auto had stepped down to it
    assert led.reserve("a", "x", [(1, 10)]).m is None


def test_commit_frees_what_a_request_did_not_use_and_release_frees_all():
    led = WindowLedgers(100, 60, clock=Clock())
    assert led.reserve("a", "1", [(8, 80)]).m == 8
    assert led.reserve("a", "2", [(8, 80)]).m is None  # 80 held
    led.commit("1", 30)  # it cost 30: 50 freed
    led.release("missing")  # unknown keys are no-ops
    assert led.reserve("a", "2", [(8, 60)]).m == 8
    led.release("2")
    assert led.totals()["callers"]["a"] == {"spent": 30, "reserved": 0, "remaining": 70}


def test_a_request_running_across_the_window_end_commits_to_its_own_window():
    clock = Clock(1019.0)
    led = WindowLedgers(100, 60, clock=clock)
    assert led.reserve("a", "1", [(8, 80)]).m == 8
    clock.t = 1021.0
    led.commit("1", 80)  # charged to the window it reserved in, not the new one
    assert led.reserve("a", "2", [(8, 100)]).m == 8


def test_a_saved_window_survives_a_restart(tmp_path):
    clock = Clock()
    led = WindowLedgers(100, 60, state_dir=tmp_path, clock=clock)
    led.reserve("a", "1", [(8, 70)])
    led.commit("1", 70)
    again = WindowLedgers(100, 60, state_dir=tmp_path, clock=clock)
    assert again.reserve("a", "2", [(8, 40)]).m is None  # 70 of 100 already spent
    assert again.reserve("a", "3", [(8, 30)]).m == 8


def test_caller_ids_are_digests_and_settings_are_checked():
    assert caller_id(None) == "all" and caller_id("") == "all"
    assert caller_id("sk-secret") != "sk-secret" and len(caller_id("sk-secret")) == 16
    for bad in (dict(per_window=0, window_s=60), dict(per_window=10, window_s=0),
                dict(per_window=10, window_s=60, headroom=0)):
        with pytest.raises(ValueError):
            WindowLedgers(**bad)
