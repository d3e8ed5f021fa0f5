"""`mqt eval` on the tiny preset: every output is written and consistent with the rows."""

import json

import pyarrow.parquet as pq

from jobs.cli import resolve
from jobs.evaluate import main
from mqt.evaluation.run import eval_examples


def test_eval_writes_calibration_consistent_with_rows(tmp_path):
    _, cfg = resolve("eval", None, [
        "preset=tiny", "easyvqa_questions=12", "captions=4", "mosaic_images=3",
        "ms=[1,4,16]", "unseen_ms=[3]", f"output={tmp_path}", f"docs={tmp_path / 'docs'}",
    ], None)
    cal = main(cfg)
    rows = pq.read_table(tmp_path / "results.parquet").to_pylist()
    n_questions = 12 + 4 + 3 * 4 * 2  # vqa, captions, mosaic vqa + multiple choice
    assert len(rows) == n_questions * 4  # every question at m = 1, 3, 4, 16
    assert {r["task"] for r in rows} == {"vqa", "caption", "mc"}
    assert all(r["question"] for r in rows if r["task"] != "caption")  # what a predictor reads
    for task, per_m in cal["by_task"].items():
        for m, s in per_m.items():
            mine = [r for r in rows if r["task"] == task and r["m"] == m]
            assert s["n"] == len(mine)
            assert abs(s["accuracy"] - sum(r["correct"] for r in mine) / len(mine)) < 1e-9
    # flops grow with m for the same question
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], {})[r["m"]] = r["flops"]
    assert all(f[1] < f[16] for f in by_id.values())
    assert json.loads((tmp_path / "calibration.json").read_text())["unseen_ms"] == [3]
    assert (tmp_path / "docs" / "eval.md").exists()
    assert (tmp_path / "docs" / "accuracy.png").exists()
    assert_priced_as_the_engine_charges(cfg, rows)


def assert_priced_as_the_engine_charges(cfg, rows):
    """A calibration row costs what mqt annotate's engine charges for the same question:
    for multiple choice the image is encoded once, each option is one more prefill."""
    import io

    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from pipeline.decode import decode_batch
    from pipeline.engine import Engine
    from pipeline.scheduler.policy import FixedPolicy

    def image_bytes(seed: int) -> bytes:  # the pixels do not change what a row costs
        buf = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 255, (20, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="PNG")
        return buf.getvalue()

    examples = {e.id: e for e in eval_examples(cfg)}
    picked = [r for r in rows if r["task"] == "mc" and r["m"] in (1, 16)][:6]
    picked += [r for r in rows if r["task"] == "vqa" and r["m"] == 4][:2]
    assert {r["task"] for r in picked} == {"mc", "vqa"}
    for m in sorted({r["m"] for r in picked}):
        mine = [r for r in picked if r["m"] == m]
        source = [{"id": r["id"], "task": r["task"], "question": examples[r["id"]].question,
                   "options": examples[r["id"]].options or None, "path": None,
                   "image": image_bytes(i), "error": None} for i, r in enumerate(mine)]
        pred = Engine({"preset": "tiny", "checkpoint": "none"}, FixedPolicy(default=m),
                         threads=1)
        out = pred(decode_batch(pa.Table.from_pylist(source), image_size=32)).to_pylist()
        by_id = {o["id"]: o for o in out}
        for r in mine:
            o = by_id[r["id"]]
            assert o["error"] is None and o["m"] == m
            if r["task"] == "mc":  # a generation's cost depends on what it generates
                assert o["flops"] == int(r["flops"]), (r["id"], m, o["flops"], r["flops"])


def test_merge_joins_eval_runs_without_a_model(tmp_path):
    from pathlib import Path

    from jobs import cli
    docs = Path(__file__).parents[2] / "docs"
    a, b = docs / "eval" / "results.parquet", docs / "eval-s1" / "results.parquet"
    assert a.exists() and b.exists(), "docs/eval and docs/eval-s1 are committed files"
    shipped = json.loads(a.with_name("calibration.json").read_text())
    _, cfg = resolve("eval", None, [f"merge=[{a},{a}]", f"output={tmp_path / 'same'}"], None)
    same = json.loads(json.dumps(main(cfg)))  # as the file has it (string keys)
    assert same["by_task"] == shipped["by_task"] and same["unseen_ms"] == shipped["unseen_ms"]
    _, cfg = resolve("eval", None, [f"merge=[{a},{b}]", f"output={tmp_path / 'both'}"], None)
    both = main(cfg)
    ids = set(pq.read_table(a, columns=["id"]).column("id").to_pylist()) | set(
        pq.read_table(b, columns=["id"]).column("id").to_pylist())
    assert sum(per[1]["n"] for per in both["by_task"].values()) == len(ids)
    assert both["unseen_ms"] == []  # the second run has no m = 3, 33
    rows = pq.read_table(tmp_path / "both" / "results.parquet").to_pylist()
    assert len(rows) == len(ids) * len(both["ms"])
    assert (tmp_path / "both" / "calibration.json").is_file()
    assert cli.main(["eval", "merge=[/nonexistent.parquet]"]) == 2
