"""The README's main command on a small scale: the bundled labelled corpus as a manifest, and
`mqt demo` (= `mqt annotate` on it with the shipped default) answering it mostly right."""

import json

import pyarrow.parquet as pq
import pytest

from jobs import demo
from mqt.data.corpus import bundled_examples, write_corpus
from mqt.tasks import get_task
from pipeline.annotate import AnnotateConfig, model_memory
from pipeline.sources import open_source


def test_bundled_corpus_is_a_valid_manifest(tmp_path):
    examples = bundled_examples(easyvqa_questions=5, captions=2, mc_questions=2,
                                mosaic_images=2)
    manifest = write_corpus(tmp_path, examples)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in examples] and len(rows) == 5 + 2 + 2 + 8
    assert {r["task"] for r in rows} == {"vqa", "caption", "mc"}
    assert all(r["answer"] for r in rows)
    assert all(r["answer"] in r["options"] for r in rows if r["task"] == "mc")
    assert len(list((tmp_path / "images").glob("*.png"))) == 2  # one file per mosaic
    assert open_source(str(manifest)).rows == len(rows)


@pytest.mark.bundled
def test_demo_annotates_the_bundled_corpus(ray_local, tmp_path, capsys):
    cfg = demo.Config(output=str(tmp_path), easyvqa_questions=16, captions=4, mc_questions=4,
                      mosaic_images=2)
    assert demo.main(cfg) == 0
    table = pq.read_table(tmp_path / "annotate" / "data")
    assert table.num_rows == 32 and table.column("error").null_count == 32
    summary = json.loads((tmp_path / "annotate" / "summary.json").read_text())
    assert summary["accuracy"]["caption"]["accuracy"] >= 0.75  # 96% in docs/eval
    assert summary["accuracy"]["vqa"]["labelled"] == 24
    # every task's accuracy, against docs/eval at m = 16 (vqa) and m = 4 (mc, captions):
    # easy-vqa free text 99.0%, easy-vqa multiple choice 99.3% (docs/bench/mc_vs_free.md),
    # mosaic cell and count questions 40-60% (chance: 10-33%)
    right = {k: [0, 0] for k in ("easyvqa vqa", "mosaic vqa", "easyvqa mc")}
    for r in table.to_pylist():
        key = f"{r['id'].split('/')[0]} {r['task']}"
        if key in right:
            right[key][0] += get_task(r["task"]).is_correct(r["prediction"], r["reference"])
            right[key][1] += 1
    assert [n for _, n in right.values()] == [16, 8, 4]
    assert right["easyvqa vqa"][0] >= 15 and right["easyvqa mc"][0] >= 3, right
    assert right["mosaic vqa"][0] >= 3, right
    assert summary["m_histogram"] == {"caption": {"4": 4}, "mc": {"4": 4}, "vqa": {"16": 24}}
    # actors sized from the test's 2-CPU Ray (pipeline/sizing.py): two one-thread actors,
    # each asking for the memory mqt-smol at batch 16 is expected to hold
    memory = round(model_memory(AnnotateConfig(preset="mqt-smol")) / 1e9, 3)
    assert 1.0 < memory < 4.0
    assert summary["this_run"]["actors"] == {"actors": 2, "threads": 1, "cpus_per_actor": 0.5,
                                             "gpus_per_actor": 0.0, "memory_per_actor": memory}
    out = capsys.readouterr().out
    assert "Accuracy per question kind" in out and "mosaic/count" in out
