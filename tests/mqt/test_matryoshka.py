"""Matryoshka schedules: the m of a training step is a pure function of (seed, step)."""

import pytest

from mqt.matryoshka import MSchedule


def test_schedules_are_a_function_of_seed_and_step():
    M = 64
    even = [MSchedule("uniform_even").sample(s, M, seed=3) for s in range(500)]
    assert even == [MSchedule("uniform_even").sample(s, M, seed=3) for s in range(500)]
    assert set(even) <= set(range(2, 65, 2)) and len(set(even)) > 25
    logu = [MSchedule("log_uniform", min_m=1).sample(s, M) for s in range(2000)]
    assert min(logu) == 1 and max(logu) == M
    assert sum(m <= 8 for m in logu) > sum(m > 8 for m in logu)  # half the log range
    assert [MSchedule("fixed", [1, 4]).sample(s, M) for s in range(4)] == [1, 4, 1, 4]
    assert MSchedule("fixed").sample(7, M) == M
    with pytest.raises(ValueError, match="schedule"):
        MSchedule("fixed", [65]).validate(M)
