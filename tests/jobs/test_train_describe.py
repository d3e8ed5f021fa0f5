"""`mqt train` with the describe stages on mqt-smol, and their settings refused before work."""

import pytest

pytestmark = pytest.mark.bundled


def smol_train_args(tmp_path, *extra):
    return ["preset=mqt-smol", "data.easyvqa_images=4", "data.mosaic_images=4",
            "data.tasks=[vqa,caption]", "data.eval_examples=4", "stage1.steps=0",
            "stage2.steps=2", "batch_size=4", "model.query.proj_init_std=0.17",
            "model.query.depth=2", "model.lm.lora_rank=4", "checkpoint_every=0",
            "eval_ms=[2]", f"output={tmp_path}", *extra]


@pytest.mark.slow  # ~13 s
def test_mqt_train_runs_the_describe_stages(tmp_path):
    from jobs.cli import resolve
    from jobs.train import main as train

    _, cfg = resolve("train", None, smol_train_args(
        tmp_path, "describe.steps=3", "describe.batch_size=4", "describe.align_weight=1.0",
        "describe.lm_weight=0.5", "align.steps=3", "align.batch_size=8"), None)
    train(cfg)
    assert (tmp_path / "describe.csv").read_text().splitlines()[1].startswith("3,")
    align = (tmp_path / "align.csv").read_text().splitlines()
    assert align[0] == "steps,final_loss" and align[1].startswith("3,")
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("extra, field", [
    (["describe.align_weight=1.0"], "align.steps"),
    (["describe.lm_weight=1.0", "backend=deepspeed"], "describe.lm_weight"),
    (["describe.steps=-1"], "describe.steps"),
    (["align.steps=2"], "describe.align_weight"),
])
def test_bad_describe_settings_fail_before_any_work(tmp_path, extra, field):
    from jobs.cli import resolve
    from mqt.configtree import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resolve("train", None, smol_train_args(tmp_path, *extra), None)
    assert not any(tmp_path.iterdir())


def test_the_byte_tokenizer_is_refused_for_describe(tmp_path):
    from jobs.cli import resolve
    from mqt.configtree import ConfigError

    with pytest.raises(ConfigError, match="byte tokenizer"):
        resolve("train", None, ["preset=tiny", "describe.steps=2", f"output={tmp_path}"], None)
