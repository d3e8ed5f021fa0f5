"""Training rows from a manifest (local and on a loopback S3 server): the rows become
examples with their images, `mqt train` caches their features beside the bundled data's and
trains, and a bad row is refused before any work."""

import json

import pytest

from jobs.cli import resolve
from jobs.train import main
from mqt.data.easyvqa import image_paths
from pipeline.train.data import manifest_examples

# the tiny run of tests/jobs/test_train.py
ARGS = ["data.easyvqa_images=24", "data.eval_examples=8", "stage1.steps=6", "stage2.steps=8",
        "batch_size=4", "checkpoint_every=5", "stage1.lr=3e-3", "stage2.lr=3e-3"]


def rows(n: int) -> list[dict]:
    """easy-vqa train images as a user's manifest would list them (absolute paths)."""
    paths = list(image_paths("train").values())[:n]
    return [{"id": f"r{i}", "image": p, "task": "vqa", "question": "What shape is this?",
             "answer": "circle"} for i, p in enumerate(paths)]


def test_manifest_rows_train_with_the_bundled_data(tmp_path):
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows(6)))
    examples = manifest_examples(str(manifest))
    assert [e.id for e in examples] == [f"manifest/r{i}" for i in range(6)]
    assert examples[0].load_image().mode == "RGB" and examples[0].answer == "circle"
    cfg = resolve("train", None, [*ARGS, f"output={tmp_path / 'run'}", "stage2.steps=2",
                                  f"data.manifest={manifest}"], None)[1]
    main(cfg)
    import torch

    cache = torch.load(tmp_path / "run" / "features.pt", weights_only=False)
    assert sum(k.startswith("manifest:") for k in cache["index"]) == 6  # a row per image


def test_manifest_on_s3(s3_bucket):
    endpoint, bucket, fs = s3_bucket
    data = rows(2)
    for r in data:
        key = f"{bucket}/imgs/{r['id']}.png"
        with open(r["image"], "rb") as src, fs.open_output_stream(key) as dst:
            dst.write(src.read())
        r["image"] = f"imgs/{r['id']}.png"  # relative to the manifest
    with fs.open_output_stream(f"{bucket}/train.jsonl") as f:
        f.write("\n".join(json.dumps(r) for r in data).encode())
    from pipeline.storage import StorageArgs

    examples = manifest_examples(f"s3://{bucket}/train.jsonl", StorageArgs(endpoint_url=endpoint))
    assert [e.load_image().size for e in examples] == [(64, 64), (64, 64)]


def test_bad_manifest_row_is_refused_before_work(tmp_path):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps({"id": "x", "image": "a.png", "task": "mc"}))
    with pytest.raises(ValueError, match="data.manifest: row 'x' needs task"):
        resolve("train", None, [*ARGS, f"output={tmp_path}", f"data.manifest={manifest}"], None)


def test_a_folder_of_captioned_images_becomes_caption_rows(tmp_path, s3_bucket):
    """`cat.png` + `cat.txt` pairs (also in sub-folders, and on S3) are caption examples; an
    image without its caption is refused before work, naming it."""
    import shutil

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    paths = list(image_paths("train").values())[:3]
    for name, p, text in zip(("a", "b", "sub/c"), paths, ("a red circle", "a blue square",
                                                          "a green triangle"), strict=True):
        shutil.copy(p, folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(text + "\n")
    examples = manifest_examples(str(folder))
    assert sorted((e.id, e.task, e.answer) for e in examples) == [
        ("folder/a.png", "caption", "a red circle"), ("folder/b.png", "caption", "a blue square"),
        ("folder/sub/c.png", "caption", "a green triangle")]
    assert all(e.load_image().size == (64, 64) for e in examples)

    endpoint, bucket, fs = s3_bucket
    for f in sorted(folder.rglob("*.*")):
        with fs.open_output_stream(f"{bucket}/photos/{f.relative_to(folder)}") as dst:
            dst.write(f.read_bytes())
    from pipeline.storage import StorageArgs

    remote = manifest_examples(f"s3://{bucket}/photos", StorageArgs(endpoint_url=endpoint))
    assert sorted(e.answer for e in remote) == sorted(e.answer for e in examples)
    assert remote[0].load_image().mode == "RGB"

    (folder / "b.txt").unlink()
    with pytest.raises(ValueError, match=r"1 of 3 images .* no caption .* 'b.png'"):
        resolve("train", None, [*ARGS, f"output={tmp_path / 'run'}", f"data.manifest={folder}"],
                None)
