"""`mqt annotate` with s3:// sources and output against a real S3-protocol server (moto) on
127.0.0.1: a folder of images, a JSONL manifest with relative image keys, Parquet output
read back from the bucket; an unreachable endpoint or missing bucket fails before any work."""

import json

import pyarrow.parquet as pq
import pytest
from test_annotate import TINY, assert_answered, image_bytes
from test_annotate_quota import calibration, tiny_row_bound  # noqa: F401 (a fixture)

from jobs import annotate, cli
from pipeline.engine import OUTPUT_SCHEMA


def put(fs, key: str, data: bytes) -> None:
    with fs.open_output_stream(key) as f:
        f.write(data)


def s3_config(endpoint: str, *overrides: str):
    return cli.resolve("annotate", None, [*TINY, f"storage.endpoint_url={endpoint}",
                                          *overrides], "tiny")[1]


def read_s3_rows(fs, prefix: str) -> dict[str, dict]:
    table = pq.read_table(f"{prefix}/data", filesystem=fs)
    assert table.schema.equals(OUTPUT_SCHEMA), table.schema
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)), "every input id exactly once"
    return {r["id"]: r for r in table.to_pylist()}


def test_folder_on_s3_to_s3(ray_local, s3_bucket):
    endpoint, bucket, fs = s3_bucket
    put(fs, f"{bucket}/imgs/a.png", image_bytes(0))
    put(fs, f"{bucket}/imgs/sub/b.jpg", image_bytes(1, "JPEG"))
    put(fs, f"{bucket}/imgs/bad.png", b"not an image")
    put(fs, f"{bucket}/imgs/notes.txt", b"skipped: not an image extension")
    summary = annotate.main(s3_config(endpoint, f"source=s3://{bucket}/imgs",
                                      f"output=s3://{bucket}/out", "policy.m.caption=3"))
    rows = read_s3_rows(fs, f"{bucket}/out")
    assert sorted(rows) == ["a.png", "bad.png", "sub/b.jpg"]
    assert_answered(rows["a.png"], 3)
    assert_answered(rows["sub/b.jpg"], 3)
    assert "not an image" in rows["bad.png"]["error"]
    saved = json.loads(fs.open_input_stream(f"{bucket}/out/summary.json").read())
    assert saved["rows"] == summary["rows"] == 3 and saved["errors"] == 1
    assert fs.get_file_info(f"{bucket}/out/config.yaml").size > 0
    again = annotate.main(s3_config(endpoint, f"source=s3://{bucket}/imgs",
                                    f"output=s3://{bucket}/out", "policy.m.caption=3"))
    assert again["this_run"]["rows"] == 0 and len(read_s3_rows(fs, f"{bucket}/out")) == 3


def test_manifest_on_s3_relative_and_absolute_keys(ray_local, s3_bucket, tmp_path):
    endpoint, bucket, fs = s3_bucket
    put(fs, f"{bucket}/set/img/x.png", image_bytes(5))
    put(fs, f"{bucket}/elsewhere/y.png", image_bytes(6))
    lines = [{"id": "x", "image": "img/x.png", "task": "vqa", "question": "Colour?",
              "answer": "red"},
             {"id": "y", "image": f"s3://{bucket}/elsewhere/y.png", "task": "mc",
              "question": "Which?", "options": ["a", "b"]},
             {"id": "gone", "image": "img/missing.png"}]
    put(fs, f"{bucket}/set/rows.jsonl", "\n".join(json.dumps(r) for r in lines).encode())
    out = tmp_path / "out"  # local output from an s3 source
    annotate.main(s3_config(endpoint, f"source=s3://{bucket}/set/rows.jsonl", f"output={out}",
                            "policy.default=4"))
    rows = {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}
    assert_answered(rows["x"], 4)
    assert rows["x"]["reference"] == "red"
    assert rows["y"]["prediction"] in ("a", "b") and rows["y"]["error"] is None
    assert rows["gone"]["error"].startswith("missing file"), rows["gone"]["error"]


@pytest.mark.parametrize("what", ["endpoint", "bucket"])
def test_unreachable_s3_fails_before_any_work(monkeypatch, s3_bucket, what):
    import socket

    endpoint, bucket, _ = s3_bucket
    if what == "endpoint":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    else:
        bucket = "no-such-bucket-here"
    import ray

    def forbidden(*a, **k):
        raise AssertionError("Ray or the model was started before validation")

    monkeypatch.setattr(ray, "init", forbidden)
    monkeypatch.setattr("pipeline.engine.load_model", forbidden)
    with pytest.raises(ValueError, match="source"):
        s3_config(endpoint, f"source=s3://{bucket}/imgs", "output=/tmp/unused-out",
                  "storage.region=us-east-1")


@pytest.mark.slow  # ~8 s; the s3 folder and manifest tests stay
def test_parquet_with_image_bytes_on_s3(ray_local, s3_bucket):
    import io

    import pyarrow as pa

    endpoint, bucket, fs = s3_bucket
    sink = io.BytesIO()
    pq.write_table(pa.table({"id": ["b0", "b1"], "image": [image_bytes(7), b"\x00junk"],
                             "task": ["vqa", "vqa"], "question": ["Shape?", "Shape?"]}), sink)
    put(fs, f"{bucket}/in/rows.parquet", sink.getvalue())
    annotate.main(s3_config(endpoint, f"source=s3://{bucket}/in/rows.parquet",
                            f"output=s3://{bucket}/out", "policy.default=2"))
    rows = read_s3_rows(fs, f"{bucket}/out")
    assert_answered(rows["b0"], 2)
    assert "not an image" in rows["b1"]["error"]


def test_sharded_openai_batch_files_on_s3_with_openai_output(ray_local, s3_bucket):
    from openai.types.chat import ChatCompletion
    from test_formats import data_url, request

    endpoint, bucket, fs = s3_bucket
    put(fs, f"{bucket}/batch/img/p.png", image_bytes(8))
    parts = [[request("a", data_url(1)), request("b", "img/p.png", visual_tokens=2)],
             [request("c", data_url(2)), request("d", "img/gone.png")]]
    for k, lines in enumerate(parts):
        put(fs, f"{bucket}/batch/part-{k}.jsonl",
            "".join(json.dumps(x) + "\n" for x in lines).encode())
    put(fs, f"{bucket}/batch/notes.txt", b"not a part")
    summary = annotate.main(s3_config(endpoint, f"source=s3://{bucket}/batch/part-*.jsonl",
                                      f"output=s3://{bucket}/out", "policy.default=4",
                                      "output_format=openai"))
    assert summary["rows"] == 4 and summary["errors"] == 1
    ok, bad = ([json.loads(x) for x in fs.open_input_stream(f"{bucket}/out/{name}").read()
                .decode().splitlines()] for name in ("openai/output.jsonl", "openai/errors.jsonl"))
    assert sorted(x["custom_id"] for x in ok) == ["a", "b", "c"]
    assert [x["custom_id"] for x in bad] == ["d"]
    assert "missing file" in bad[0]["response"]["body"]["error"]["message"]
    for line in ok:
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.usage.model_extra["visual_tokens"] == (2 if line["custom_id"] == "b" else 4)


@pytest.mark.slow  # two quota jobs on the test's Ray, ~25 s
def test_a_quota_job_with_its_output_on_s3_keeps_its_ledger_there(ray_local, s3_bucket,
                                                                  calibration):  # noqa: F811
    """The ledger's state lives beside a remote output (s3://.../ledger.json and its
    journal objects), not on the driver's disk: a second run of the job reads the first
    run's spend from the bucket, plans only what is left, and the job stays within Q with
    every id once."""
    endpoint, bucket, fs = s3_bucket
    for i in range(12):
        put(fs, f"{bucket}/imgs/{i:02d}.png", image_bytes(i))
    quota = 20 * tiny_row_bound(4)
    args = [f"source=s3://{bucket}/imgs", f"output=s3://{bucket}/out",
            f"quota.calibration={calibration}", f"quota.flops={quota}", "progress=false"]
    first = annotate.main(s3_config(endpoint, *args, "limit=5"))
    assert first["rows"] == 5
    saved = json.loads(fs.open_input_stream(f"{bucket}/out/ledger.json").read())
    assert saved["spent"] == first["quota"]["spent_flops"] > 0 and len(saved["committed"]) == 5
    summary = annotate.main(s3_config(endpoint, *args))
    rows = read_s3_rows(fs, f"{bucket}/out")
    assert sorted(rows) == [f"{i:02d}.png" for i in range(12)] and summary["errors"] == 0
    q = summary["quota"]
    assert q["spent_flops"] - q["this_run_flops"] == saved["spent"]  # read from the bucket
    assert q["spent_flops"] <= quota
    state = json.loads(fs.open_input_stream(f"{bucket}/out/ledger.json").read())
    assert state["spent"] == q["spent_flops"] and len(state["committed"]) == 12
