"""The cascade in the live engine (tiny random model, no Ray): escalated rows answer what a
plain m2 run answers (continuing from the LM's KV cache of the m1 prompt prefix), the others
what a plain m1 run answers, an escalated row's FLOPs are cost(m1) + cost(m2) - vision -
query(m1) - the LM's prefill of that prefix, and behind a ledger the spend stays within the
quota, refused escalations keeping their m1 answer."""

import statistics

import pyarrow as pa
import pytest
from test_annotate import image_bytes

from mqt.config import preset
from mqt.cost import prefill_flops, query_flops, vision_flops
from mqt.model import prefix_text_tokens
from pipeline.decode import decode_batch
from pipeline.engine import Engine
from pipeline.scheduler.cascade import CascadePolicy
from pipeline.scheduler.ledger import Ledger, LedgerClient
from pipeline.scheduler.policy import Cascade, FixedPolicy

M1, M2 = 2, 8
MODEL = {"preset": "tiny", "checkpoint": "none"}
QUESTIONS = ["What colour is it?", "Is there a circle?", "How many shapes?", "What shape?",
             "Is it red?", "What is on the left?", "Is the square blue?", "What is this?"]
COLUMNS = ("prediction", "m", "visual_tokens", "prompt_tokens", "new_tokens", "flops", "error")


def source_rows() -> list[dict]:
    """Eight VQA rows and four multiple-choice rows, each on its own random image."""
    rows = [{"id": f"v{i}", "task": "vqa", "question": q, "options": None}
            for i, q in enumerate(QUESTIONS)]
    rows += [{"id": f"c{i}", "task": "mc", "question": "Which colour?",
              "options": ["red", "green", "blue", "teal"][: 2 + i % 3]} for i in range(4)]
    for i, r in enumerate(rows):
        r.update(path=None, image=image_bytes(i), error=None)
    return rows


def batch(rows: list[dict]) -> pa.Table:
    return decode_batch(pa.Table.from_pylist(rows), image_size=32)


def run(policy, rows, ledger=None, reuse_prefix=True) -> list[dict]:
    pred = Engine(MODEL, policy, threads=1, ledger=ledger, reuse_prefix=reuse_prefix)
    return pred(batch(rows)).to_pylist()


@pytest.fixture(scope="module")
def plain():
    """(rows, answers at m1, the cascade's threshold: the median m1 confidence per task)."""
    rows = source_rows()
    at_m1 = run(FixedPolicy(default=M1), rows)
    cut = {t: statistics.median(o["confidence"] for o in at_m1 if o["task"] == t)
           for t in ("vqa", "mc")}
    return rows, at_m1, cut


def shared() -> int:
    cfg = preset("tiny")
    return vision_flops(cfg) + query_flops(cfg, M1)


def prefix_positions() -> int:
    """What an escalation from M1 continues from: the template's text before the image and
    the M1 visual tokens."""
    return prefix_text_tokens(preset("tiny")) + M1


def escalation_bound(probe: Engine, row: dict) -> int:
    return probe.bound(row, M2, prefix_positions()) - shared()


def cascade_policy(cut) -> CascadePolicy:
    return CascadePolicy({t: Cascade(M1, M2, cut[t]) for t in cut})


def test_escalated_rows_answer_as_a_plain_m2_run_and_costs_add_up(plain):
    rows, at_m1, cut = plain
    out = run(cascade_policy(cut), rows)
    up = [i for i, o in enumerate(at_m1) if o["confidence"] < cut[o["task"]]]
    assert 0 < len(up) < len(rows)  # some rows escalate, some do not
    at_m2 = run(FixedPolicy(default=M2), [rows[i] for i in up])  # those rows, directly at m2
    for i, o in enumerate(out):
        if i in up:
            direct = at_m2[up.index(i)]
            assert [o[k] for k in COLUMNS[:5]] == [direct[k] for k in COLUMNS[:5]], o
            assert o["confidence"] == pytest.approx(direct["confidence"], abs=1e-5)
            T = direct["prompt_tokens"]  # the m2 prefill re-reads no cached position
            saved = (prefill_flops(preset("tiny"), M2, T)
                     - prefill_flops(preset("tiny"), M2, T, prefix_positions()))
            assert saved > 0
            assert o["flops"] == at_m1[i]["flops"] + direct["flops"] - shared() - saved
        else:
            assert [o[k] for k in COLUMNS] == [at_m1[i][k] for k in COLUMNS], o


def test_without_the_prefix_an_escalation_reads_the_whole_prompt_again(plain):
    """`reuse_prefix=False`: the same answers, each escalation charged its whole m2 prompt
    (cost(m1) + cost(m2) - vision - query(m1))."""
    rows, at_m1, cut = plain
    out = run(cascade_policy(cut), rows)
    whole = run(cascade_policy(cut), rows, reuse_prefix=False)
    up = [i for i, o in enumerate(at_m1) if o["confidence"] < cut[o["task"]]]
    at_m2 = run(FixedPolicy(default=M2), [rows[i] for i in up])
    for i, (o, w) in enumerate(zip(out, whole, strict=True)):
        assert [o[k] for k in COLUMNS[:5]] == [w[k] for k in COLUMNS[:5]]
        if i in up:
            assert w["flops"] == at_m1[i]["flops"] + at_m2[up.index(i)]["flops"] - shared()
            assert o["flops"] < w["flops"]
        else:
            assert o["flops"] == w["flops"] == at_m1[i]["flops"]


@pytest.mark.parametrize("room", [0, 1, 3])
def test_spend_within_a_ledger_quota_and_refused_escalations_keep_m1(plain, room):
    """Room for every first attempt's bound plus `room` of the largest escalation bound: the
    escalations granted are exactly those whose bound fits, in row order, in what is left."""
    rows, at_m1, cut = plain
    probe = Engine(MODEL, FixedPolicy(default=M1), threads=1)
    first = sum(probe.bound(r, M1) for r in rows)
    esc = {i: escalation_bound(probe, r) for i, r in enumerate(rows)}
    ledger = Ledger(first + room * max(esc.values()))
    out = run(cascade_policy(cut), rows, LedgerClient(ledger))
    assert all(o["error"] is None for o in out)  # every first attempt fitted
    assert ledger.spent == sum(o["flops"] for o in out) <= ledger.quota
    assert ledger.reserved == 0 and ledger.overrun == 0
    left, granted = ledger.quota - sum(o["flops"] for o in at_m1), []
    for i, o in enumerate(at_m1):
        if o["confidence"] < cut[o["task"]] and esc[i] <= left:
            granted.append(i)
            left -= esc[i]
    assert [i for i, o in enumerate(out) if o["m"] == M2] == granted
    wanted = sum(o["confidence"] < cut[o["task"]] for o in at_m1)
    assert len(granted) >= min(room, wanted)
    if room == 0:
        assert len(granted) < wanted  # some escalation was refused
    free = run(cascade_policy(cut), rows)  # the same cascade without a quota
    for i in granted:
        assert [out[i][k] for k in COLUMNS] == [free[i][k] for k in COLUMNS]
    for i in set(range(len(rows))) - set(granted):  # refused or never asked: the m1 answer
        assert [out[i][k] for k in COLUMNS] == [at_m1[i][k] for k in COLUMNS]


def test_an_escalation_ledger_caps_escalations_and_both_ledgers_agree(plain):
    """Escalations draw on a second ledger with room for one bound; the job's is roomy."""
    rows, at_m1, cut = plain
    probe = Engine(MODEL, FixedPolicy(default=M1), threads=1)
    esc = [escalation_bound(probe, r) for r in rows]
    main, pot = Ledger(10**15), Ledger(max(esc))
    pred = Engine(MODEL, cascade_policy(cut), threads=1, ledger=LedgerClient(main),
                     escalation_ledger=LedgerClient(pot))
    out = pred(batch(rows)).to_pylist()
    up = [i for i, o in enumerate(out) if o["m"] == M2]
    assert len(up) >= 1 and pot.spent <= pot.quota
    assert pot.spent == sum(out[i]["flops"] - at_m1[i]["flops"] for i in up)
    assert main.spent == sum(o["flops"] for o in out)
    assert main.reserved == pot.reserved == 0
    wanted = [i for i, o in enumerate(at_m1) if o["confidence"] < cut[o["task"]]]
    assert len(up) < len(wanted)  # the pot refused the others; they keep the m1 answer
