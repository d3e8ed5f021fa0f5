"""detail=auto: planned per question kind on the shipped calibration (no Ray, no model)."""

import pytest

from pipeline.serve.app import ServeArgs, WindowQuota, auto_policy, check, ladder

QUESTIONS = ["What shape is in the image?", "What color is the shape?", "Is there a circle?",
             "How many shapes are there?", "What colour is the cell in row 2, column 3?"]


def choose(args: ServeArgs) -> list[int]:
    return auto_policy(args).choose(["vqa"] * 5 + ["caption"], [*QUESTIONS, None])


def test_without_a_limit_each_task_gets_its_dearest_m_worth_buying():
    assert choose(ServeArgs()) == [32, 32, 32, 32, 32, 2]
    assert choose(ServeArgs(auto_by="task")) == [32, 32, 32, 32, 32, 2]


def test_a_tighter_budget_parts_the_kinds():
    by_kind = choose(ServeArgs(auto_flops=8e9))
    # easy-vqa's kinds are cheap to get right, mosaics' are not
    assert by_kind[:3] == [4, 4, 4] and by_kind[3:5] == [16, 16] and by_kind[5] == 2


def test_an_auto_budget_too_small_fails_at_start_naming_the_least_that_works():
    with pytest.raises(ValueError, match=r"auto_flops: .* give at least 6\.\d+e\+09"):
        check(ServeArgs(auto_flops=6e9))
    with pytest.raises(ValueError, match="auto_by"):
        check(ServeArgs(auto_by="question"))
    with pytest.raises(ValueError, match="quota.window_s"):
        check(ServeArgs(quota=WindowQuota(flops=1e12, window_s=0)))


def test_the_ladder_steps_down_in_powers_of_two():
    assert ladder(32) == [32, 16, 8, 4, 2, 1]
    assert ladder(24) == [24, 16, 8, 4, 2, 1]
    assert ladder(1) == [1]
