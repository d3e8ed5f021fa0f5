"""The LM's LoRA adapters in the PEFT layout: `mqt export` writes them, the PEFT library puts
them on the base LM and gives the same logits as the model's own adapted LM, and
`load_peft` reads them back onto a model."""

import json

import pytest
import torch
from peft import PeftModel

from jobs import cli
from mqt.checkpoint import PEFT_FILES, export_peft, load_peft
from mqt.config import preset
from mqt.load import ModelArgs, load_model
from mqt.lora import from_peft, lora_state
from mqt.model import build_lm, build_model


def test_shipped_adapters_through_peft_give_the_models_own_logits(tmp_path):
    out = tmp_path / "peft"
    assert cli.main(["export", "--preset", "mqt-smol", f"output={out}"]) == 0
    config = json.loads((out / PEFT_FILES[0]).read_text())
    model = load_model(ModelArgs(preset="mqt-smol"))
    lm_cfg = model.cfg.lm
    assert (config["r"], config["lora_alpha"]) == (lm_cfg.lora_rank, lm_cfg.lora_alpha)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    base = build_lm(lm_cfg).eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        peft_lm = PeftModel.from_pretrained(base, str(out)).eval()  # wraps base in place
        ours, theirs = model.lm(input_ids=ids).logits, peft_lm(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert not torch.allclose(ours, plain, atol=1e-3)  # the adapters change the answers


def test_export_and_load_back_round_trip(tmp_path):
    cfg = preset("tiny")
    cfg.lm.lora_rank = 4
    a, b = build_model(cfg, seed=1), build_model(cfg, seed=2)
    for p in lora_state(a.lm).values():
        p.add_(torch.randn_like(p))  # lora_b starts at 0: make the adapters say something
    assert not all(torch.equal(x, y) for x, y in zip(lora_state(a.lm).values(),
                                                     lora_state(b.lm).values(), strict=True))
    load_peft(b, export_peft(a, tmp_path / "peft"))
    for key, value in lora_state(a.lm).items():
        assert torch.equal(value, lora_state(b.lm)[key]), key


def test_adapters_of_another_rank_or_no_adapters_are_refused(tmp_path):
    cfg = preset("tiny")
    cfg.lm.lora_rank = 4
    config = json.loads((export_peft(build_model(cfg), tmp_path / "p") / PEFT_FILES[0])
                        .read_text())
    with pytest.raises(ValueError, match="r=4, this model's adapters need 8"):
        from_peft(config, {}, rank=8, alpha=cfg.lm.lora_alpha)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        export_peft(build_model(preset("tiny")), tmp_path / "none")
    assert cli.main(["export", "--preset", "tiny", f"output={tmp_path / 'x'}"]) == 2
