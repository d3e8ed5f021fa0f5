"""End-to-end tests of `mqt annotate` on a local Ray instance with the tiny random model:
folders with bad files, manifests mixing tasks, Parquet with image bytes, the output schema,
the summary, and bad configs that must fail before Ray or any model work."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import annotate, cli
from pipeline.annotate import AnnotateConfig, job_tasks, target_config
from pipeline.engine import OUTPUT_SCHEMA

TINY = ["checkpoint=none", "batch_size=4", "threads=1", "actors=1"]  # one actor: quick


def image_bytes(seed: int, fmt: str = "PNG", size=(30, 20)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def small_pngs(folder, n: int):
    """`folder` with n small PNGs named 000.png, 001.png, ... (a corpus to stop midway)."""
    folder.mkdir()
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(image_bytes(i, size=(16, 16)))
    return folder


def config(*overrides: str):
    return cli.resolve("annotate", None, [*TINY, *overrides], "tiny")[1]


def read_rows(out) -> dict[str, dict]:
    table = pq.read_table(out / "data")
    assert table.schema.equals(OUTPUT_SCHEMA), table.schema  # the documented types
    rows = table.to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "every input id exactly once"
    return {r["id"]: r for r in rows}


def assert_answered(r: dict, m: int) -> None:
    assert r["error"] is None and r["prediction"] is not None, r
    assert r["m"] == m and r["visual_tokens"] == m
    assert r["flops"] > 0 and r["seconds"] > 0 and r["prompt_tokens"] > 0


@pytest.fixture
def folder(tmp_path):
    """Good PNG/JPEG images (one in a subfolder, one upper-case suffix) and bad files."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(image_bytes(0))
    (root / "b.jpg").write_bytes(image_bytes(1, "JPEG"))
    (root / "sub" / "c.PNG").write_bytes(image_bytes(2, size=(12, 40)))
    (root / "zero.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(image_bytes(3)[:80])
    (root / "text.jpg").write_text("not an image at all")
    (root / "huge.png").write_bytes(image_bytes(4, size=(300, 300)))  # > max_pixels below
    (root / "notes.txt").write_text("not an image extension: skipped")
    return root


def test_folder_every_file_once_bad_ones_as_error_rows(ray_local, folder, tmp_path):
    out = tmp_path / "out"
    summary = annotate.main(config(f"source={folder}", f"output={out}", "policy.m.caption=3",
                                   "max_pixels=50000"))
    rows = read_rows(out)
    assert set(rows) == {"a.png", "b.jpg", "sub/c.PNG", "zero.png", "truncated.png",
                         "text.jpg", "huge.png"}
    for good in ("a.png", "b.jpg", "sub/c.PNG"):
        assert_answered(rows[good], 3)
        assert rows[good]["task"] == "caption" and rows[good]["new_tokens"] >= 1
    reasons = {"zero.png": "empty", "truncated.png": "truncated", "text.jpg": "not an image",
               "huge.png": "too many pixels"}
    for name, reason in reasons.items():
        assert reason in rows[name]["error"] and rows[name]["prediction"] is None, rows[name]
        assert rows[name]["m"] is None
    assert summary["rows"] == 7 and summary["errors"] == 4
    assert summary["m_histogram"] == {"caption": {3: 3}}
    saved = json.loads((out / "summary.json").read_text())
    assert saved["m_histogram"] == {"caption": {"3": 3}} and saved["flops"] == summary["flops"]
    assert (out / "config.yaml").exists()


def test_manifest_mixed_tasks(ray_local, tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(image_bytes(10 + i))
    opts = ["red", "green", "blue"]
    lines = [
        {"id": "cap", "image": "imgs/0.png", "task": "caption"},
        {"id": "vqa", "image": "imgs/1.png", "task": "vqa", "question": "What colour?"},
        {"id": "mc", "image": "imgs/2.png", "task": "mc", "question": "Colour?", "options": opts},
        {"id": "mc2", "image": str(tmp_path / "imgs/0.png"), "task": "mc",
         "question": "Shape?", "options": ["circle", "square"]},
        {"id": "gone", "image": "imgs/missing.png", "task": "caption"},
        {"id": "odd", "image": "imgs/0.png", "task": "poetry"},
        {"id": "one", "image": "imgs/0.png", "task": "mc", "question": "?", "options": ["x"]},
        # a row's own m and answer length win over the policy and the task's
        {"id": "own", "image": "imgs/1.png", "task": "vqa", "question": "What colour?",
         "visual_tokens": 7, "max_new_tokens": 1},
        {"id": "own-m0", "image": "imgs/1.png", "task": "caption", "visual_tokens": 0},
        {"id": "own-big", "image": "imgs/1.png", "task": "caption", "visual_tokens": 17},
        {"id": "own-len", "image": "imgs/1.png", "task": "caption", "max_new_tokens": "8"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    annotate.main(config(f"source={manifest}", f"output={out}", "actors=2",
                         "policy.m={caption: 2, vqa: 4}"))
    rows = read_rows(out)
    assert set(rows) == {line["id"] for line in lines}
    assert_answered(rows["cap"], 2)
    assert_answered(rows["vqa"], 4)
    assert rows["vqa"]["question"] == "What colour?"
    for mc, options in (("mc", opts), ("mc2", ["circle", "square"])):
        assert_answered(rows[mc], 16)  # not in policy.m: the default, M
        assert rows[mc]["prediction"] in options and rows[mc]["new_tokens"] == 0
        assert rows[mc]["confidence"] <= 0
    assert rows["gone"]["error"].startswith("missing file")
    assert "unknown task 'poetry'" in rows["odd"]["error"]
    assert "needs >= 2 options" in rows["one"]["error"]
    assert_answered(rows["own"], 7)
    assert rows["own"]["new_tokens"] == 1 and rows["vqa"]["new_tokens"] > 1
    assert "visual_tokens must be an integer in 1.." in rows["own-m0"]["error"]
    assert "outside 1..16" in rows["own-big"]["error"]  # past M: the engine says so
    assert "max_new_tokens must be an integer" in rows["own-len"]["error"]


def test_parquet_with_image_bytes(ray_local, tmp_path):
    table = pa.table({"id": ["p0", "p1", "p2"],
                      "image": [image_bytes(20), image_bytes(21, "JPEG"), b"garbage"]})
    pq.write_table(table, tmp_path / "images.parquet")
    out = tmp_path / "out"
    summary = annotate.main(config(f"source={tmp_path / 'images.parquet'}", f"output={out}",
                                   "task=vqa", "question=Is there a shape?",
                                   "policy.default=5"))
    rows = read_rows(out)
    assert_answered(rows["p0"], 5)
    assert_answered(rows["p1"], 5)
    assert rows["p1"]["task"] == "vqa" and rows["p1"]["question"] == "Is there a shape?"
    assert "not an image" in rows["p2"]["error"]
    assert summary["m_histogram"] == {"vqa": {5: 2}}
    with pytest.raises(ValueError, match="task: .* holds rows of a job with task='vqa'"):
        annotate.main(config(f"source={tmp_path / 'images.parquet'}", f"output={out}"))
    again = annotate.main(config(f"source={tmp_path / 'images.parquet'}", f"output={out}",
                                 "task=vqa", "question=Is there a shape?", "policy.default=5"))
    assert again["this_run"]["rows"] == 0 and again["rows"] == 3  # a finished job: a no-op
    summary = annotate.main(config(f"source={tmp_path / 'images.parquet'}", f"output={out}",
                                   "overwrite=true", "limit=2"))
    assert summary["rows"] == 2 and len(read_rows(out)) == 2


@pytest.mark.parametrize("overrides,field", [
    (["source=/no/such/folder"], "source"),
    (["policy.m.caption=99"], "policy.m.caption"),
    (["policy.m.caption=0"], "policy.m.caption"),
    (["policy.default=17"], "policy.default"),
    (["policy.m.poetry=2"], "policy.m.poetry"),
    (["task=poetry"], "task"),
    (["task=vqa"], "question"),  # folder rows would have no question
    (["cpus_per_actor=-1"], "cpus_per_actor"),
    (["block_rows=-1"], "block_rows"),
    (["tasks.poetry.prompt=x"], "tasks.poetry"),
    (["tasks.vqa.temperature=0.5"], "tasks.vqa.temperature"),
    (["tasks.vqa.max_new_tokens=0"], "tasks.vqa.max_new_tokens"),
    (["tasks.caption.prompt='Say {what}'"], "tasks.caption.prompt"),
    (["storage.endpoint_url=http://127.0.0.1:1", "source=s3://bucket/x"], "source"),
])
def test_bad_config_fails_before_any_work(monkeypatch, tmp_path, overrides, field):
    (tmp_path / "a.png").write_bytes(image_bytes(0))
    import ray

    def forbidden(*a, **k):
        raise AssertionError("Ray or the model was started before validation")

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.setattr("pipeline.engine.load_model", forbidden)
    args = [f"source={tmp_path}", f"output={tmp_path / 'out'}", *overrides]
    with pytest.raises(ValueError, match=field):
        cli.resolve("annotate", None, [*TINY, *args], "tiny")
    cfg = cli.resolve("annotate", None, [*TINY, *args], "tiny", check=False)[1]
    with pytest.raises(ValueError, match=field):
        annotate.main(cfg)
    assert cli.main(["annotate", "--preset", "tiny", *TINY, *args]) == 2


def test_manifest_without_image_column_is_refused(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": 1, "path": "x.png"}) + "\n")
    with pytest.raises(ValueError, match="no 'image' column"):
        config(f"source={manifest}", f"output={tmp_path / 'out'}")


def test_engine_keeps_order_and_matches_the_model_row_by_row():
    """Without Ray: one MQT pass at the largest m, sliced per row, grouped by (task, m), gives
    what the model gives one row at a time; rows come back in input order."""
    from pipeline.decode import decode_batch
    from pipeline.engine import Engine
    from pipeline.scheduler.policy import FixedPolicy

    pred = Engine({"preset": "tiny", "checkpoint": "none"},
                     FixedPolicy({"caption": 2, "vqa": 7}))
    specs = [("c0", "caption", "", None), ("v0", "vqa", "Colour?", None),
             ("bad", "caption", "", None), ("m0", "mc", "Which?", ["a", "b", "c"]),
             ("c1", "caption", "", None), ("v1", "vqa", "Shape?", None)]
    src = [{"id": i, "path": None, "image": b"x" if i == "bad" else image_bytes(n), "task": t,
            "question": q, "options": o, "error": None}
           for n, (i, t, q, o) in enumerate(specs)]
    out = pred(decode_batch(pa.Table.from_pylist(src), image_size=32)).to_pylist()
    assert [r["id"] for r in out] == [s[0] for s in specs]
    assert [r["m"] for r in out] == [2, 7, None, 16, 2, 7]
    model = pred.model
    for r, s in zip(out, src, strict=True):
        if r["error"] is None and r["task"] in ("caption", "vqa"):
            prompt = {"caption": "Describe the image in a few words.",
                      "vqa": f"{s['question']} Answer in one word."}[r["task"]]
            img = Image.open(io.BytesIO(s["image"]))
            alone = model.generate([prompt], r["m"], images=[img],
                                   max_new_tokens=16 if r["task"] == "caption" else 8)[0]
            assert r["prediction"] == alone.text and r["new_tokens"] == alone.new_tokens
    assert "not an image" in out[2]["error"] and out[3]["prediction"] in ["a", "b", "c"]


def test_checkpoint_config_not_the_preset_sets_M_and_image_size(ray_local, folder, tmp_path):
    """A checkpoint with M = 8 and 48 px images under the default preset (tiny: M = 16,
    32 px): the checks and the decode size follow the checkpoint."""
    from mqt.checkpoint import save_checkpoint
    from mqt.load import ModelArgs, model_config
    from mqt.model import build_model

    over = {"query": {"num_queries": 8}, "vision": {"image_size": 48}}
    ckpt = save_checkpoint(build_model(model_config(ModelArgs(model=over))), tmp_path / "ckpt")
    args = [f"checkpoint={ckpt}", f"source={folder}", f"output={tmp_path / 'out'}",
            "max_pixels=50000"]
    with pytest.raises(ValueError, match=r"policy.m.caption=12 is outside 1..8"):
        cli.resolve("annotate", None, [*args, "policy.m.caption=12"], "tiny")
    assert target_config(config(*args)).vision.image_size == 48
    annotate.main(config(*args))
    rows = read_rows(tmp_path / "out")
    assert_answered(rows["a.png"], 8)  # the default m is this checkpoint's M


def test_per_task_prompt_and_max_new_tokens_from_config():
    """`tasks.<name>` overrides reach the engine: a longer caption prompt costs more prompt
    tokens, and max_new_tokens caps every generated answer."""
    from pipeline.decode import decode_batch
    from pipeline.engine import Engine
    from pipeline.scheduler.policy import FixedPolicy

    src = [{"id": str(i), "path": None, "image": image_bytes(i), "task": "caption",
            "question": "", "options": None, "error": None} for i in range(3)]
    batch = decode_batch(pa.Table.from_pylist(src), image_size=32)
    rows = {}
    for name, over in {"default": {}, "short": {"max_new_tokens": 2},
                       "long": {"prompt": "Look closely and describe the image in a few words."}
                       }.items():
        tasks = job_tasks(AnnotateConfig(tasks={"caption": over}))
        pred = Engine({"preset": "tiny", "checkpoint": "none"}, FixedPolicy({"caption": 4}),
                         tasks=tasks)
        rows[name] = pred(batch).to_pylist()
    assert all(r["new_tokens"] <= 2 for r in rows["short"])
    assert max(r["new_tokens"] for r in rows["default"]) > 2  # random weights run to the cap
    assert all(long["prompt_tokens"] > d["prompt_tokens"]
               for long, d in zip(rows["long"], rows["default"], strict=True))
