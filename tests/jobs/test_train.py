"""`mqt train` on the tiny preset: the loss falls, checkpoints resume bit-exactly."""

from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

import jobs.trainloop
from jobs.cli import resolve
from jobs.train import DataArgs, main, yesno_class, yesno_kept
from mqt.checkpoint import load_checkpoint
from mqt.data.easyvqa import Example
from mqt.matryoshka import MSchedule

ARGS = ["data.easyvqa_images=24", "data.eval_examples=8", "stage1.steps=6", "stage2.steps=8",
        "batch_size=4", "checkpoint_every=5", "stage1.lr=3e-3", "stage2.lr=3e-3"]


def config(tmp_path, *extra):
    return resolve("train", None, [*ARGS, f"output={tmp_path}", *extra], None)[1]


def test_loss_falls_and_model_exports(tmp_path):
    result = main(config(tmp_path / "run", "stage2.steps=30"))
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    losses = [float(r.split(",")[3]) for r in rows]
    assert len(losses) == 36
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    model = load_checkpoint(tmp_path / "run" / "model")  # strict load of the export
    assert model.num_queries == 16 and set(result["eval"]) == {"acc@1", "acc@4", "acc@16"}


def test_resume_after_a_crash_is_bit_exact(tmp_path, monkeypatch):
    main(config(tmp_path / "a"))  # uninterrupted reference
    real, calls = jobs.trainloop.loss_on, {"n": 0}

    def crash_at_step_8(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr("jobs.train.loss_on", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        main(config(tmp_path / "b"))
    monkeypatch.setattr("jobs.train.loss_on", real)
    main(config(tmp_path / "b"))  # resumes from the step-5 checkpoint
    steps = [int(r.split(",")[0]) for r in
             (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[:7] == list(range(1, 8)) and steps[7:] == list(range(6, 15))
    a, b = (load_file(str(tmp_path / x / "model" / "query.safetensors")) for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


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


def _yesno(i: int, negated: bool, answer: str):
    q = "is there not a circle?" if negated else "is there a circle?"
    return Example(f"q{i}", None, "vqa", q, answer, meta={"kind": "yesno"})


def test_yesno_balance_evens_the_negated_and_answer_classes():
    # skewed as easy-vqa is: negated questions mostly "yes", plain ones mostly "no"
    sizes = {(True, "yes"): 800, (True, "no"): 200, (False, "no"): 800, (False, "yes"): 200}
    classes = [c for c, n in sizes.items() for _ in range(n)]
    rows = [_yesno(i, neg, ans) for i, (neg, ans) in enumerate(classes)]
    other = Example("c", None, "caption", "", "a red circle", meta={"kind": "caption"})
    plain = yesno_kept([*rows, other], DataArgs(yesno_keep=0.4))
    even = yesno_kept([*rows, other], DataArgs(yesno_keep=0.4, yesno_balance=True))
    assert other in plain and other in even  # only yes/no rows are sampled
    got = Counter(yesno_class(ex) for ex in even if ex is not other)
    assert all(abs(n - 200) <= 40 for n in got.values()), got  # 0.4 x 2000 / 4 each
    assert got[(True, "no")] == 200  # a small class is kept whole
    skew = Counter(yesno_class(ex) for ex in plain if ex is not other)
    assert skew[(True, "yes")] > 2 * skew[(True, "no")]  # the plain share keeps the skew
    assert even == yesno_kept([*rows, other], DataArgs(yesno_keep=0.4, yesno_balance=True))
