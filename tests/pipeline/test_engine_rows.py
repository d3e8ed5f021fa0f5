"""A row's own m and answer length in the engine (what a serving request or a manifest row
asks for) win over the policy and the task's length, in one batch with rows that have none:
each answer is the one a batch of that row alone at that m gives."""

import pyarrow as pa
from test_annotate import image_bytes

from pipeline.decode import decode_batch
from pipeline.engine import Engine
from pipeline.scheduler.policy import FixedPolicy

MODEL = {"preset": "tiny", "checkpoint": "none"}


def decoded(rows: list[dict]) -> pa.Table:
    table = decode_batch(pa.Table.from_pylist(
        [{"id": r["id"], "task": "vqa", "question": r["question"], "options": None,
          "path": None, "image": image_bytes(r["seed"]), "error": None} for r in rows]),
        image_size=32)
    return table.append_column("m", pa.array([r.get("m") for r in rows], pa.int32())) \
        .append_column("max_new_tokens", pa.array([r.get("n") for r in rows], pa.int32()))


def test_a_rows_m_and_length_win_and_match_the_row_alone():
    engine = Engine(MODEL, FixedPolicy(default=3), threads=1)
    rows = [{"id": "a", "seed": 0, "question": "What colour?"},
            {"id": "b", "seed": 1, "question": "What shape?", "m": 9},
            {"id": "c", "seed": 2, "question": "Is it red?", "m": 9, "n": 2},
            {"id": "d", "seed": 3, "question": "How many?", "n": 1}]
    out = engine(decoded(rows)).to_pylist()
    assert [o["m"] for o in out] == [3, 9, 9, 3] and all(o["error"] is None for o in out)
    assert out[2]["new_tokens"] <= 2 and out[3]["new_tokens"] <= 1
    for i, row in enumerate(rows):  # the same row alone, its m given by a policy
        alone = Engine(MODEL, FixedPolicy(default=row.get("m", 3)), threads=1)
        single = {k: v for k, v in row.items() if k != "m"}
        got = alone(decoded([single])).to_pylist()[0]
        assert (got["output"], got["flops"]) == (out[i]["output"], out[i]["flops"]), row["id"]


def test_a_rows_m_outside_1_to_M_is_an_error_row_naming_it():
    engine = Engine(MODEL, FixedPolicy(default=3), threads=1)
    out = engine(decoded([{"id": "a", "seed": 0, "question": "What?", "m": 17},
                          {"id": "b", "seed": 1, "question": "What?"}])).to_pylist()
    assert out[0]["error"] == "bad request: m=17 is outside 1..16 (M = query.num_queries)"
    assert out[0]["output"] is None and out[1]["error"] is None and out[1]["m"] == 3
