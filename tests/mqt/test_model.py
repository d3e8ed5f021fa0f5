"""The MQT model: prefix property in every mode, m checks, generation, checkpoints."""

import numpy as np
import pytest
import torch
from PIL import Image

from mqt.checkpoint import load_checkpoint, save_checkpoint
from mqt.config import QueryConfig, tiny
from mqt.model import build_model
from mqt.query import QueryTransformer
from mqt.text import IGNORE_INDEX, build_batch

MODES = [("official", 1), ("content", 1), ("official", 3), ("content", 2)]


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 40, 3), dtype=np.uint8))
            for i in range(n)]


@pytest.fixture(scope="module")
def model():
    return build_model(tiny(), seed=0)


@pytest.mark.parametrize("mode,depth", MODES)
def test_prefix_property(mode, depth):
    cfg = QueryConfig(num_queries=16, mode=mode, depth=depth, num_heads=4)
    torch.manual_seed(0)
    mqt = QueryTransformer(cfg, in_dim=32, out_dim=24).eval()
    feats = torch.randn(3, 25, 32)  # a 5x5 grid: the 4x4 position table gets resized
    full = mqt(feats, 16, (5, 5))
    assert full.shape == (3, 16, 24)
    for m in (1, 2, 7, 16):
        torch.testing.assert_close(mqt(feats, m, (5, 5)), full[:, :m], atol=1e-6, rtol=1e-5)


def test_content_mode_differs_from_official_with_the_same_weights():
    torch.manual_seed(0)
    official = QueryTransformer(QueryConfig(num_queries=4, mode="official"), 16, 8).eval()
    content = QueryTransformer(QueryConfig(num_queries=4, mode="content"), 16, 8).eval()
    content.load_state_dict(official.state_dict(), strict=True)  # same parameter names
    feats = torch.randn(2, 9, 16)
    assert not torch.allclose(official(feats, 4), content(feats, 4), atol=1e-4)


@pytest.mark.parametrize("bad", [0, -1, 17, 2.0, True, "4"])
def test_m_outside_range_is_an_error(model, bad):
    pv = model.preprocess(images(1))
    with pytest.raises((ValueError, TypeError), match="num_visual_tokens"):
        model.encode_images(pv, bad)


def test_generate_groups_by_m_and_keeps_order(model):
    imgs, qs = images(4), ["what?", "colour of the shape?", "how many?", "a long question?"]
    ms = [4, 16, 1, 4]
    together = model.generate(qs, ms, images=imgs, max_new_tokens=4)
    for i in range(4):
        alone = model.generate([qs[i]], ms[i], images=[imgs[i]], max_new_tokens=4)[0]
        assert alone.token_ids == together[i].token_ids  # left padding changes nothing
        assert alone.mean_logprob == pytest.approx(together[i].mean_logprob, abs=1e-4)
        assert together[i].num_visual_tokens == ms[i]
        assert 1 <= together[i].new_tokens <= 4 and together[i].mean_logprob < 0


def test_generate_rejects_mismatched_lengths(model):
    with pytest.raises(ValueError, match="num_visual_tokens"):
        model.generate(["a", "b"], [1, 2, 3], images=images(2))


def test_embed_checks_image_token_count(model):
    batch = build_batch(model.tokenizer, model.format_prompts(["hi"]), 3)
    with pytest.raises(ValueError, match="image tokens per row"):
        model.embed(batch["input_ids"], torch.zeros(1, 4, model.cfg.lm.hidden_size))


def test_labels_mask_image_and_prompt(model):
    batch = build_batch(model.tokenizer, model.format_prompts(["q1", "longer q2"]), 5,
                        answers=["yes", "a red circle"], padding_side="right")
    ids, labels = batch["input_ids"], batch["labels"]
    assert (labels[ids == model.image_token_id] == IGNORE_INDEX).all()
    kept = [model.tokenizer.decode([t for t in row if t != IGNORE_INDEX]) for row in labels]
    assert kept == ["yes", "a red circle"]


def test_training_step_lowers_loss():
    model = build_model(tiny(), seed=1).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    pv = model.preprocess(images(4, seed=1))
    batch = build_batch(model.tokenizer, model.format_prompts(["colour?"] * 4), 8,
                        answers=["red", "blue", "red", "green"], padding_side="right")
    losses = []
    for _ in range(15):
        out = model(batch["input_ids"], batch["attention_mask"], 8, pixel_values=pv,
                    labels=batch["labels"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_checkpoint_round_trip(model, tmp_path):
    save_checkpoint(model, tmp_path / "ck")
    again = load_checkpoint(tmp_path / "ck")
    pv = model.preprocess(images(2))
    torch.testing.assert_close(again.encode_images(pv, 16), model.encode_images(pv, 16),
                               atol=0, rtol=0)
    a = model.generate(["what?", "which?"], [3, 9], pixel_values=pv, max_new_tokens=5)
    b = again.generate(["what?", "which?"], [3, 9], pixel_values=pv, max_new_tokens=5)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_checkpoint_loads_strictly(model, tmp_path):
    from safetensors.torch import load_file, save_file

    path = save_checkpoint(model, tmp_path / "ck", parts=("query",))
    t = load_file(str(path / "query.safetensors"))
    t.pop("ln_v.bias")
    save_file(t, str(path / "query.safetensors"))
    with pytest.raises(RuntimeError, match="ln_v.bias"):
        load_checkpoint(path)


def test_build_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b = build_model(tiny(), seed=5), build_model(tiny(), seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def test_lora_starts_as_identity_and_round_trips(tmp_path):
    from mqt.configtree import merge

    base = build_model(tiny(), seed=0)  # unsaved parts rebuild from seed 0 on load
    cfg = merge(tiny(), {"lm": {"frozen": True, "lora_rank": 4}})
    model = build_model(cfg, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("query.") or ".lora_" in n for n in trainable)
    pv = model.preprocess(images(2))
    batch = build_batch(model.tokenizer, model.format_prompts(["a", "b"]), 4)
    same = [m(batch["input_ids"], batch["attention_mask"], 4, pixel_values=pv).logits
            for m in (base, model)]
    torch.testing.assert_close(same[0], same[1])  # B = 0 at init: the LM is unchanged
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_b" in n:
                p.normal_()
    path = save_checkpoint(model, tmp_path / "ck", parts=("query", "lm_lora"))
    assert not (path / "lm.safetensors").exists()
    again = load_checkpoint(path)
    torch.testing.assert_close(
        again(batch["input_ids"], batch["attention_mask"], 4, pixel_values=pv).logits,
        model(batch["input_ids"], batch["attention_mask"], 4, pixel_values=pv).logits)


def full_forward_logprob(model, question: str, answer: str, image_embeds) -> float:
    """Reference: one forward of prompt + answer, no padding, no cache."""
    m = image_embeds.shape[1]
    batch = build_batch(model.tokenizer, model.format_prompts([question]), m, answers=[answer])
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], m,
                       image_embeds=image_embeds).logits
    logp = torch.log_softmax(logits[0, :-1].float(), -1)
    target = batch["labels"][0, 1:]
    keep = target != IGNORE_INDEX
    return float(logp[keep].gather(-1, target[keep].unsqueeze(-1)).sum())


@pytest.mark.parametrize("m", [1, 5, 16])
def test_option_scores_over_a_shared_prompt_equal_full_forwards(model, m):
    qs = ["which?", "what colour is the big shape on the left?", "odd one out"]
    options = [["red", "a blue circle", "no"], ["x", "", "yellow"], ["one", "two", "three", "4"]]
    with torch.no_grad():
        embeds = model.encode_images(model.preprocess(images(3)), m)
    cached = model.option_logprobs(qs, options, m, image_embeds=embeds)
    assert [len(s) for s in cached] == [3, 3, 4]
    end = model.template.answer_suffix  # each option is scored as a whole answer
    for i, (q, opts) in enumerate(zip(qs, options, strict=True)):
        for j, o in enumerate(opts):
            ref = full_forward_logprob(model, q, o + end, embeds[i: i + 1])
            assert cached[i][j] == pytest.approx(ref, abs=1e-4), (q, o)
    assert all(s < 0 for row in cached for s in row)  # the empty option too: its marker


def test_an_option_is_scored_as_the_whole_answer(model):
    """An option's score is its tokens' log-probability plus that of the end-of-turn marker
    after them, so an option that a longer one starts with ("a" of "ab") is charged for
    stopping there: without the marker it would score at least as high as "ab"."""
    end = model.template.answer_suffix
    with torch.no_grad():
        embeds = model.encode_images(model.preprocess(images(1)), 4)
    (a, ab), = model.option_logprobs(["which?"], [["a", "ab"]], 4, image_embeds=embeds)
    assert model.option_ids("a") == model.tokenizer("a" + end, add_special_tokens=False)[
        "input_ids"]
    assert model.option_token_counts(["a", "ab"]) == [2, 3]  # one token per byte, and "</s>"
    open_a, open_ab = (full_forward_logprob(model, "which?", o, embeds) for o in ("a", "ab"))
    assert open_ab < open_a  # a sum over more tokens
    stop = full_forward_logprob(model, "which?", "a" + end, embeds) - open_a
    assert a == pytest.approx(open_a + stop, abs=1e-4) and stop < 0
    assert ab == pytest.approx(full_forward_logprob(model, "which?", "ab" + end, embeds),
                               abs=1e-4)


@pytest.mark.parametrize("m1,m2", [(1, 4), (4, 16), (2, 3)])
def test_an_answer_continued_from_a_smaller_m_prompt_prefix_equals_a_fresh_one(model, m1, m2):
    """An escalation's shortcut: the LM's KV cache of the template's text before the image
    and the first m1 visual tokens, kept from the m1 answer, and the m2 answer read from
    there on: the same greedy answers and option scores as a fresh m2 pass over the same
    MQT output, for prompts of different lengths (padded between prefix and continuation)."""
    from mqt.model import PromptPrefix

    qs = ["which?", "what colour is the big shape on the left?", "odd one out"]
    options = [["red", "a blue circle", "no"], ["x", "", "yellow"], ["one", "two", "three", "4"]]
    with torch.no_grad():
        embeds = model.encode_images(model.preprocess(images(3)), m2)
    _, prefix = model.generate_cached(qs, m1, embeds, 6, keep_prefix=True)
    assert prefix.m == m1 and prefix.length == model.prefix_text_tokens + m1
    fresh, none = model.generate_cached(qs, m2, embeds, 6)
    assert none is None
    cont, _ = model.generate_cached(qs, m2, embeds, 6, prefix=prefix)
    for a, b in zip(fresh, cont, strict=True):
        assert (a.token_ids, a.prompt_tokens, a.new_tokens) == (b.token_ids, b.prompt_tokens,
                                                                  b.new_tokens)
        assert a.mean_logprob == pytest.approx(b.mean_logprob, abs=1e-4)
    _, scored = model.option_logprobs_cached(qs, options, m1, embeds, keep_prefix=True)
    ref = model.option_logprobs(qs, options, m2, image_embeds=embeds)
    got, _ = model.option_logprobs_cached(qs, options, m2, embeds, prefix=scored)
    for r, g in zip(ref, got, strict=True):
        assert g == pytest.approx(r, abs=1e-4)
    # rows of prefixes regroup: the last two rows alone, then restacked in another order
    two = PromptPrefix.stack([prefix.rows([2]), prefix.rows([1])])
    part, _ = model.generate_cached([qs[2], qs[1]], m2, embeds[[2, 1]], 6, prefix=two)
    assert [p.token_ids for p in part] == [fresh[2].token_ids, fresh[1].token_ids]


def test_a_prompt_prefix_only_continues_to_a_larger_m(model):
    with torch.no_grad():
        embeds = model.encode_images(model.preprocess(images(2)), 8)
    _, prefix = model.generate_cached(["a?", "b?"], 4, embeds, 2, keep_prefix=True)
    with pytest.raises(ValueError, match="continues to a larger m"):
        model.generate_cached(["a?", "b?"], 4, embeds, 2, prefix=prefix)
    with pytest.raises(ValueError, match="continues to a larger m"):
        model.generate_cached(["a?", "b?"], 9, embeds, 2, prefix=prefix)  # embeds hold 8
    with pytest.raises(ValueError, match="same m"):
        type(prefix).stack([prefix, type(prefix)(2, prefix.layers)])
