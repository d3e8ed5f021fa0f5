"""A row's own m and answer length in the engine (what a serving request or a manifest row
asks for) win over the policy and the task's length, in one batch with rows that have none:
each answer is the one a batch of that row alone at that m gives."""

import pyarrow as pa
from test_annotate import image_bytes

from pipeline.decode import decode_batch
from pipeline.engine import Engine
from pipeline.scheduler.ledger import REFUSED, Ledger, LedgerClient
from pipeline.scheduler.policy import FixedPolicy
from pipeline.sources import SOURCE_SCHEMA

MODEL = {"preset": "tiny", "checkpoint": "none"}


def decoded(rows: list[dict]) -> pa.Table:
    """Source rows with their own m and answer length (`n`), through the decode stage."""
    return decode_batch(pa.Table.from_pylist(
        [{"id": r["id"], "task": "vqa", "question": r["question"], "options": None,
          "path": None, "image": image_bytes(r["seed"]), "error": None, "m": r.get("m"),
          "max_new_tokens": r.get("n")} for r in rows], schema=SOURCE_SCHEMA), image_size=32)


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
        assert (got["prediction"], got["flops"]) == (out[i]["prediction"], out[i]["flops"]), \
            row["id"]


def test_a_rows_m_outside_1_to_M_is_an_error_row_naming_it():
    engine = Engine(MODEL, FixedPolicy(default=3), threads=1)
    out = engine(decoded([{"id": "a", "seed": 0, "question": "What?", "m": 17},
                          {"id": "b", "seed": 1, "question": "What?"}])).to_pylist()
    assert out[0]["error"] == "bad request: m=17 is outside 1..16 (M = query.num_queries)"
    assert out[0]["prediction"] is None and out[1]["error"] is None and out[1]["m"] == 3


def test_under_a_quota_a_rows_own_m_is_charged_at_that_m_and_refused_when_it_does_not_fit():
    probe = Engine(MODEL, FixedPolicy(default=3), threads=1)
    rows = [{"id": "a", "seed": 0, "question": "What colour?"},
            {"id": "b", "seed": 1, "question": "What colour?", "m": 16}]
    bound = {r["id"]: probe.bound({"task": "vqa", "question": r["question"], "options": None},
                                  r.get("m", 3)) for r in rows}
    assert bound["b"] > bound["a"]
    ledger = Ledger(bound["a"] + bound["b"] - 1)  # pays for a and not b at its own m
    engine = Engine(MODEL, FixedPolicy(default=3), threads=1, ledger=LedgerClient(ledger))
    out = engine(decoded(rows)).to_pylist()
    assert out[0]["error"] is None and out[0]["m"] == 3
    assert out[1]["error"] == REFUSED
    assert ledger.spent == out[0]["flops"] and ledger.reserved == 0
    roomy = Ledger(bound["a"] + bound["b"])
    out = Engine(MODEL, FixedPolicy(default=3), threads=1,
                 ledger=LedgerClient(roomy))(decoded(rows)).to_pylist()
    assert [o["m"] for o in out] == [3, 16] and roomy.spent == sum(o["flops"] for o in out)
