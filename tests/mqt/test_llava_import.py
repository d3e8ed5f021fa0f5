"""Import of the published MQT-LLaVA layout, checked against an independent reference.

The test writes a tiny checkpoint in exactly the published layout, then compares our
model with a from-scratch computation of the official forward: CLIP hidden state -2
without CLS, one cross-attention with position-only keys, `@ proj`, and the LM run on
text and image embeddings concatenated by hand (as LLaVA does, no masked_scatter).
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from mqt.llava import load_mqt_llava
from mqt.query import sincos_2d
from mqt.text import IMAGE_TOKEN, build_batch, byte_tokenizer

M, D, H, HEADS = 16, 32, 48, 4  # queries, vision width, LM width, MQT heads
LLAMA = dict(vocab_size=260, hidden_size=H, intermediate_size=96, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             rms_norm_eps=1e-5)


def official_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's table as the published code builds it (meshgrid w first)."""
    gw, gh = np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float32) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1)


def query_tensors(gen: torch.Generator) -> dict[str, torch.Tensor]:
    r = lambda *s: torch.randn(*s, generator=gen) * 0.3  # noqa: E731
    t = {"query": r(M, D), "attn.in_proj_weight": r(3 * D, D), "attn.in_proj_bias": r(3 * D),
         "attn.out_proj.weight": r(D, D), "attn.out_proj.bias": r(D), "proj": r(D, H),
         "pos_embed": torch.from_numpy(official_sincos(D, 4)).half()}
    for ln in ("ln_q", "ln_k", "ln_v"):
        t[f"{ln}.weight"], t[f"{ln}.bias"] = 1 + r(D), r(D)
    return t


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("mqt_llava")
    torch.manual_seed(0)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=D, intermediate_size=64,
                                            num_hidden_layers=3, num_attention_heads=2,
                                            image_size=35, patch_size=7))  # 5x5 grid != 4x4
    clip.save_pretrained(root / "clip")
    lm = LlamaForCausalLM(LlamaConfig(**LLAMA))
    tensors = {k: v.contiguous() for k, v in lm.state_dict().items()}
    q = query_tensors(torch.Generator().manual_seed(1))
    tensors.update({f"model.query_abstractor.{k}": v for k, v in q.items()})
    folder = root / "mqt-llava-tiny"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = dict(LLAMA, model_type="llava_llama", architectures=["LlavaLlamaForCausalLM"],
               mm_vision_tower=str(root / "clip"), mm_vision_select_layer=-2,
               mm_hidden_size=D, mm_query_num_heads=HEADS)
    (folder / "config.json").write_text(json.dumps(cfg))
    byte_tokenizer().save_pretrained(str(folder))
    return {"folder": folder, "clip": root / "clip", "q": q, "lm": tensors}


def reference_features(ckpt, pixel_values: torch.Tensor, m: int) -> torch.Tensor:
    """The official resampler forward, written out with plain tensor ops."""
    clip = CLIPVisionModel.from_pretrained(str(ckpt["clip"])).eval()
    x = clip(pixel_values=pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
    q = {k: v.float() for k, v in ckpt["q"].items()}
    side = int(math.sqrt(x.shape[1]))
    pos = F.interpolate(q["pos_embed"].reshape(1, 4, 4, D).permute(0, 3, 1, 2),
                        size=(side, side), mode="bicubic", align_corners=False)
    pos = pos.permute(0, 2, 3, 1).reshape(-1, D)
    ln = lambda t, n: F.layer_norm(t, (D,), q[f"{n}.weight"], q[f"{n}.bias"], 1e-6)  # noqa: E731
    qi, ki, vi = ln(q["query"][:m] + q["pos_embed"][:m], "ln_q"), ln(pos, "ln_k"), ln(x, "ln_v")
    wq, wk, wv = q["attn.in_proj_weight"].chunk(3)
    bq, bk, bv = q["attn.in_proj_bias"].chunk(3)
    dh = D // HEADS
    Q = (qi @ wq.T + bq).reshape(m, HEADS, dh).transpose(0, 1)  # (h, m, dh)
    K = (ki @ wk.T + bk).reshape(-1, HEADS, dh).transpose(0, 1)  # (h, N, dh)
    V = (vi @ wv.T + bv).reshape(x.shape[0], -1, HEADS, dh).transpose(1, 2)  # (B, h, N, dh)
    att = torch.softmax(Q @ K.transpose(1, 2) / math.sqrt(dh), dim=-1)  # (h, m, N)
    out = (att.unsqueeze(0) @ V).transpose(1, 2).reshape(x.shape[0], m, D)
    out = out @ q["attn.out_proj.weight"].T + q["attn.out_proj.bias"]
    return out @ q["proj"]  # (B, m, H)


def test_sincos_matches_published_table():
    assert torch.allclose(sincos_2d(D, 4), torch.from_numpy(official_sincos(D, 4)), atol=1e-6)


@pytest.mark.parametrize("m", [1, 5, M])
def test_image_features_match_reference(ckpt, m):
    model = load_mqt_llava(ckpt["folder"])
    pv = torch.randn(2, 3, 35, 35, generator=torch.Generator().manual_seed(2))
    ours = model.encode_images(pv, m)
    ref = reference_features(ckpt, pv, m)
    assert ours.shape == (2, m, H)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_logits_match_reference(ckpt):
    model = load_mqt_llava(ckpt["folder"])
    pv = torch.randn(1, 3, 35, 35, generator=torch.Generator().manual_seed(3))
    m, question = 5, "What is in the picture?"
    prompt = model.format_prompts([question])[0]
    assert prompt.startswith("A chat between") and f"USER: {IMAGE_TOKEN}\n" in prompt
    batch = build_batch(model.tokenizer, [prompt], m)
    ours = model(batch["input_ids"], batch["attention_mask"], m, pixel_values=pv).logits

    tok = byte_tokenizer()
    before, after = prompt.split(IMAGE_TOKEN)
    ids_b = torch.tensor([tok(before)["input_ids"]])
    ids_a = torch.tensor([tok(after, add_special_tokens=False)["input_ids"]])
    lm = LlamaForCausalLM(LlamaConfig(**LLAMA))
    lm.load_state_dict({k: v for k, v in ckpt["lm"].items() if "query_abstractor" not in k})
    emb = lm.get_input_embeddings()
    x = torch.cat([emb(ids_b), reference_features(ckpt, pv, m), emb(ids_a)], dim=1)
    ref = lm(inputs_embeds=x).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_missing_or_extra_query_weight_is_an_error(ckpt, tmp_path):
    from safetensors.torch import load_file

    for mutate in (lambda t: t.pop("model.query_abstractor.ln_v.bias"),
                   lambda t: t.__setitem__("model.query_abstractor.extra", torch.zeros(1))):
        folder = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        for f in ckpt["folder"].iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        t = load_file(str(folder / "model.safetensors"))
        mutate(t)
        save_file(t, str(folder / "model.safetensors"))
        with pytest.raises(RuntimeError, match="ln_v.bias|extra"):
            load_mqt_llava(folder)


def test_not_a_llava_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="llava_llama"):
        load_mqt_llava(tmp_path)
