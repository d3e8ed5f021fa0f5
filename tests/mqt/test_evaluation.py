"""mqt.evaluation: the tables `mqt eval` builds from its rows."""

from mqt.evaluation.run import oracle


def test_oracle_takes_the_smallest_right_m():
    rows = [{"id": "a", "m": 1, "correct": False, "flops": 1.0},
            {"id": "a", "m": 4, "correct": True, "flops": 4.0},
            {"id": "a", "m": 16, "correct": True, "flops": 16.0},
            {"id": "b", "m": 1, "correct": False, "flops": 1.0},
            {"id": "b", "m": 4, "correct": False, "flops": 4.0},
            {"id": "b", "m": 16, "correct": False, "flops": 16.0}]
    o = oracle(rows, [1, 4, 16])
    assert o == {"accuracy": 0.5, "mean_flops": 2.5, "n": 2}
