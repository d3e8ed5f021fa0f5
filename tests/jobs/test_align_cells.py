"""The per-cell alignment loss: one target per mosaic cell, and `mqt train` runs it."""

import torch
from test_train import config

from jobs.align_cells import CellReadout, cell_align_loss, cell_slot, cell_targets
from jobs.trainloop import WordTargets
from mqt.data import easyvqa_answers, easyvqa_examples, mosaic_answers, mosaic_examples
from mqt.text import byte_tokenizer


def words():
    return WordTargets(byte_tokenizer(), [w for w in easyvqa_answers() + mosaic_answers()
                                          if w not in ("yes", "no")])


def test_cell_slots_are_distinct_across_grids():
    slots = [cell_slot(g, r, c) for g in (2, 3) for r in range(1, g + 1) for c in range(1, g + 1)]
    assert slots == list(range(13))


def test_one_target_per_cell_naming_its_words():
    w = words()
    ex = easyvqa_examples("train", tasks=("caption",), limit=2)
    mos = mosaic_examples("train", 2)[::4]  # one question per mosaic
    rows, slots, targets = cell_targets(ex + mos, w)
    cells = [c for m in mos for c in m.meta["cells"]]
    assert len(rows) == len(cells) and set(rows.tolist()) == {2, 3}
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(len(cells)))
    for c, t in zip(cells, targets, strict=True):
        named = {w.words[i] for i in t.nonzero().flatten().tolist()}
        assert named == {str(v) for v in (c.color, c.shape, c.digit) if v is not None}


def test_loss_has_gradients_for_the_readout():
    head = torch.nn.Embedding(400, 8)  # the LM's output embeddings (byte tokenizer ids)

    class Model:  # what the loss uses: visual tokens and the LM's output embeddings
        lm = type("LM", (), {"get_output_embeddings": staticmethod(lambda: head)})()

        def encode_features(self, feats, m):
            return feats[:, :m]

    model, w = Model(), words()
    mos = mosaic_examples("train", 2)[::4]
    readout = CellReadout(8)
    loss, parts = cell_align_loss(model, readout, torch.randn(2, 6, 8, requires_grad=True),
                                  mos, w, m=4)
    loss.backward()
    assert parts["cell"] > 0 and readout.pos.weight.grad.abs().sum() > 0


def test_training_with_cell_alignment_runs(tmp_path):
    from jobs.train import main

    main(config(tmp_path / "cells", "align.steps=4", "align.batch_size=8", "stage2.steps=2",
                "data.mosaic_images=4", "align.cell_weight=1.0"))
    assert (tmp_path / "cells" / "align.csv").read_text().splitlines()[1].startswith("4,")
