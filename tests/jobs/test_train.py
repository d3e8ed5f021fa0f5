"""`mqt train` on the tiny preset: the loss falls, checkpoints resume bit-exactly."""

import pytest
import torch
from safetensors.torch import load_file

import mqt.train.steps
from jobs.cli import resolve
from jobs.train import main
from mqt.checkpoint import load_checkpoint

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
    real, calls = mqt.train.steps.loss_on, {"n": 0}

    def crash_at_step_8(*a, **k):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr("mqt.train.fit.loss_on", crash_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        main(config(tmp_path / "b"))
    monkeypatch.setattr("mqt.train.fit.loss_on", real)
    main(config(tmp_path / "b"))  # resumes from the step-5 checkpoint
    steps = [int(r.split(",")[0]) for r in
             (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]]
    assert steps[:7] == list(range(1, 8)) and steps[7:] == list(range(6, 15))
    a, b = (load_file(str(tmp_path / x / "model" / "query.safetensors")) for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
