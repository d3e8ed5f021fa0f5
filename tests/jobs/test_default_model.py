"""The embedded default (`mqt-smol`): real bundled backbones, shipped MQT weights."""

import pytest
import torch

from jobs.cli import resolve
from jobs.train import main as train
from mqt.checkpoint import shipped_checkpoint
from mqt.data import easyvqa_examples
from mqt.load import load_model
from mqt.train.steps import FeatureCache, accuracy

pytestmark = pytest.mark.bundled


@pytest.mark.slow  # ~17 s
def test_default_trains_a_few_steps_and_the_loss_falls(tmp_path):
    _, cfg = resolve("train", None, [
        "preset=mqt-smol", "data.easyvqa_images=6", "data.tasks=[vqa]", "data.eval_examples=4",
        "stage1.steps=0", "stage2.steps=12", "stage2.lr=5e-3",
        "stage2.schedule.kind=fixed", "stage2.schedule.values=[2]", "batch_size=4",
        "model.query.proj_init_std=0.17", "model.lm.lora_rank=8", "checkpoint_every=0",
        f"output={tmp_path}",
    ], None)
    train(cfg)
    losses = [float(r.split(",")[3]) for r in
              (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


@pytest.fixture(scope="module")
def shipped():
    assert shipped_checkpoint("mqt-smol") is not None, "the shipped weights are committed"
    _, args = resolve("generate", None, ["preset=mqt-smol", "images=[x]"], None, check=False)
    return load_model(args)


def test_shipped_default_answers_easy_vqa_test_questions(shipped):
    """What docs/default-model.md claims, on >= 200 easy-vqa test questions (those of the
    first 22 test images): >= 95% at M, >= 90% at m = 4 (docs/eval: 99.0% and 99.3%)."""
    examples = easyvqa_examples("test", tasks=("vqa",), limit=22)
    assert len(examples) >= 200
    cache = FeatureCache(shipped)
    cache.add(examples)
    feats = cache.get(examples)
    with torch.inference_mode():
        at_M, _ = accuracy(shipped, examples, feats, shipped.num_queries)
        at_4, _ = accuracy(shipped, examples, feats, 4)
    assert at_M >= 0.95 and at_4 >= 0.90, (len(examples), at_M, at_4)


def test_shipped_default_is_as_right_by_multiple_choice_as_by_free_text(shipped):
    """The same easy-vqa test questions asked both ways at m = 16: the options scored as
    answers to the trained VQA prompt are picked right as often as the free text is (with
    the options listed in the prompt, multiple choice trailed by ~20 points)."""
    from mqt.evaluation.run import run_m

    model = shipped
    examples = easyvqa_examples("test", tasks=("vqa", "mc"), limit=4)  # 44 questions
    cache = FeatureCache(model)
    cache.add(examples)
    rows = run_m(model, examples, cache.get(examples), 16, 32)
    right = {t: sum(r["correct"] for r in rows if r["task"] == t) for t in ("vqa", "mc")}
    n = len(examples) // 2
    assert right["mc"] >= max(0.9 * n, right["vqa"] - 1), (right, n)
