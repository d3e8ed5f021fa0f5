"""Describe alignment: visual tokens trained to read like a fixed-length description."""

import pytest
import torch

from mqt.data import easyvqa_examples, mosaic_examples
from mqt.data.easyvqa import captioned_images
from mqt.text import byte_tokenizer, load_tokenizer
from mqt.train.describe import (
    CELL_TOKENS,
    NUMBER_WORDS,
    DescriptionVocab,
    description,
    mimic_loss,
    targets,
)

pytestmark = pytest.mark.bundled


@pytest.fixture(scope="module")
def tok():
    from mqt.smollm import smollm2_path

    return load_tokenizer(str(smollm2_path()))


def words(tok, ids):
    return [tok.decode([i]).strip() for i in ids]


def test_a_mosaic_reads_cell_by_cell_in_reading_order(tok):
    vocab = DescriptionVocab(tok)
    for ex in mosaic_examples("train", 6)[::4]:
        cells = ex.meta["cells"]
        ids = description(ex, vocab)
        assert len(ids) == CELL_TOKENS * len(cells) == CELL_TOKENS * ex.meta["grid"] ** 2
        for k, c in enumerate(cells):
            got = words(tok, ids[CELL_TOKENS * k: CELL_TOKENS * (k + 1)])
            what = [c.color if c.color != "teal" else "te", c.shape] if c.kind == "shape" \
                else ["digit", NUMBER_WORDS[c.digit]]  # never a position's token
            assert got == [str(c.row), str(c.col), *what, ";"]
        assert [(c.row, c.col) for c in cells] == sorted((c.row, c.col) for c in cells)


def test_a_single_shape_is_three_tokens_and_unknown_content_has_none(tok):
    vocab = DescriptionVocab(tok)
    known = captioned_images("train")
    exs = easyvqa_examples("train", tasks=("vqa",), limit=60)
    with_facts = [ex for ex in exs if int(ex.meta["image_id"].split("/")[1]) in known]
    without = [ex for ex in exs if int(ex.meta["image_id"].split("/")[1]) not in known]
    assert with_facts and without
    ex = with_facts[0]
    color, shape = known[int(ex.meta["image_id"].split("/")[1])]
    assert words(tok, description(ex, vocab)) == [color if color != "teal" else "te", shape, "."]
    assert description(without[0], vocab) is None


def test_a_tokenizer_that_cannot_write_one_token_per_word_is_refused():
    with pytest.raises(ValueError, match="cannot write descriptions"):
        DescriptionVocab(byte_tokenizer())


def test_targets_pad_with_filler_and_the_query_learns_them(tok):
    from jobs.cli import resolve
    from mqt.load import load_model
    from mqt.train.steps import FeatureCache

    _, args = resolve("generate", None, ["preset=mqt-smol", "checkpoint=none", "images=[x]",
                                         "model.query.depth=2"], None, check=False)
    model = load_model(args).train()
    vocab = DescriptionVocab(model.tokenizer)
    exs = mosaic_examples("train", 4)[::4] + easyvqa_examples("train", tasks=("caption",),
                                                             limit=4)
    want, known = targets(model, exs, vocab)
    assert want.shape == (len(exs), model.num_queries, model.lm.config.hidden_size)
    assert known.all()
    filler = model.lm.get_input_embeddings().weight[vocab.filler]
    n = CELL_TOKENS * exs[0].meta["grid"] ** 2
    torch.testing.assert_close(want[0, n:], filler.expand(model.num_queries - n, -1))
    cache = FeatureCache(model)
    cache.add(exs)
    feats = cache.get(exs)
    opt = torch.optim.AdamW(model.query.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = mimic_loss(model, feats, exs, vocab)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.grad is None for p in model.lm.parameters())  # the LM takes no part
