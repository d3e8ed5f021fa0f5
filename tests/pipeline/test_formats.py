"""Users' formats: OpenAI Batch API files in and out, sharded manifests (folder, glob, list),
Hugging Face image structs, column mapping, `data:` URLs, http(s) image rules, and retries
of retryable error rows on resume. The end-to-end tests run `mqt annotate` on the test's
local Ray with the tiny random model; the OpenAI output is read back with the official
`openai` client's types."""

import base64
import http.server
import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from openai.types.chat import ChatCompletion
from test_annotate import assert_answered, config, image_bytes, read_rows

from jobs import annotate
from pipeline.batchfile import OUTPUT_FILES
from pipeline.decode import decode_row
from pipeline.errors import http_status, retryable
from pipeline.sources import Defaults, SourceError, manifest_rows, open_source
from pipeline.storage import locate
from pipeline.writer import COLUMNS_MARKER, RENAMED, OutputFolder, PartWriter


def data_url(seed: int) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes(seed)).decode()


def request(cid: str, image: str, text: str = "What colour is it?", **body) -> dict:
    content = ([{"type": "text", "text": text}] if text else []) + [
        {"type": "image_url", "image_url": {"url": image}}]
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "mqt-smol", "messages": [{"role": "user", "content": content}],
                     **body}}


def write_jsonl(path, lines) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def rows_of(lines, kind: str, base: str = "/base", **kw) -> dict[str, dict]:
    table = manifest_rows(pa.table({"text": [json.dumps(x) if isinstance(x, dict) else x
                                             for x in lines]}), base, Defaults(), kind, **kw)
    return {r["id"]: r for r in table.to_pylist()}


# ------------------------------------------------------------------ reading (no Ray, no model)


def test_openai_request_lines_become_rows_and_bad_ones_error_rows_naming_the_field():
    rows = rows_of([
        request("q1", data_url(0), visual_tokens=2, max_tokens=3),
        request("q2", "img/x.png", max_completion_tokens=5),
        request("cap", data_url(1), text=""),  # no text: a caption
        request("hot", data_url(2), temperature=0.7),
        request("two", data_url(3)) | {"url": "/v1/embeddings"},
        request("streamed", data_url(4), stream=True),
        {**request("bad-image", "data:image/png;base64,@@@")},
        {"method": "POST", "body": {}},  # no custom_id
        "not json",
    ], "openai")
    q1 = rows["q1"]
    assert q1["image"] == image_bytes(0) and q1["path"] is None and q1["error"] is None
    assert (q1["task"], q1["question"], q1["m"], q1["max_new_tokens"]) == (
        "vqa", "What colour is it?", 2, 3)
    assert rows["q2"]["path"] == "/base/img/x.png" and rows["q2"]["max_new_tokens"] == 5
    assert rows["cap"]["task"] == "caption" and rows["cap"]["error"] is None
    assert rows["hot"]["error"].startswith("bad request: body.temperature")
    assert rows["two"]["error"].startswith("bad request: url: must be /v1/chat/completions")
    assert rows["streamed"]["error"].startswith("bad request: body.stream")
    assert "not valid base64" in rows["bad-image"]["error"]
    assert "a custom_id" in rows['line:{"method": "POST", "body": {}}']["error"]
    assert rows["line:not json"]["error"].startswith("bad manifest line: not JSON")


def test_data_urls_and_hugging_face_image_structs_are_images_not_paths():
    rows = rows_of([{"id": "a", "image": data_url(5), "task": "caption"},
                    {"id": "b", "image": "data:text/plain;base64,aGk=", "task": "caption"}],
                   "jsonl")
    assert rows["a"]["image"] == image_bytes(5) and rows["a"]["path"] is None
    assert rows["b"]["error"].startswith("bad image")
    hf = pa.table({"qid": ["1", "2"], "picture": [{"bytes": image_bytes(6), "path": "x.png"},
                                                  {"bytes": None, "path": "y.png"}],
                   "query": ["Shape?", "Colour?"], "label": ["circle", "red"]})
    out = manifest_rows(hf, "/data", Defaults("vqa"), "parquet",
                        {"id": "qid", "image": "picture", "question": "query", "answer": "label"})
    a, b = out.to_pylist()
    assert (a["id"], a["image"], a["question"], a["answer"]) == ("1", image_bytes(6), "Shape?",
                                                                  "circle")
    assert b["image"] is None and b["path"] == "/data/y.png" and b["error"] is None


def test_sharded_manifests_from_a_folder_a_glob_or_a_list(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        pq.write_table(pa.table({"id": [f"{k}-{i}" for i in range(k + 2)],
                                 "image": ["x.png"] * (k + 2)}), shards / f"part-{k}.parquet")
    (shards / "_SUCCESS.parquet").write_bytes(b"")  # hidden: not a part
    folder = open_source(str(shards))
    assert folder.kind == "parquet" and folder.rows == 2 + 3 + 4 and len(folder.parts) == 3
    glob = open_source(str(shards / "part-[01].parquet"))
    assert glob.rows == 5 and [p.rsplit("/", 1)[-1] for p in glob.parts] == [
        "part-0.parquet", "part-1.parquet"]
    listed = open_source([str(shards / "part-2.parquet"), str(shards / "part-0.parquet")])
    assert listed.rows == 6
    write_jsonl(tmp_path / "more.jsonl", [{"id": "j", "image": "x.png"}])
    with pytest.raises(SourceError, match="mix kinds"):
        open_source([str(shards / "part-0.parquet"), str(tmp_path / "more.jsonl")])
    with pytest.raises(SourceError, match="no manifests .* match"):
        open_source(str(shards / "nothing-*.parquet"))
    with pytest.raises(SourceError, match="no 'qid' column.*mapped"):
        open_source(str(shards), columns={"id": "qid"})
    with pytest.raises(SourceError, match="columns.colour: not a manifest column"):
        open_source(str(shards), columns={"colour": "c"})
    write_jsonl(tmp_path / "batch.jsonl", [request("q", data_url(0))])
    assert open_source(str(tmp_path / "batch.jsonl")).kind == "openai"


def test_retryable_errors_and_their_http_status():
    for err in ("model: RuntimeError: CUDA out of memory", "cannot read /x.png: [Errno 21]",
                "cannot fetch https://h/x.png: timed out", "https://h/x answered HTTP 503",
                "quota: refused by the budget ledger (the job's compute quota is spent)"):
        assert retryable(err), err
    for err in ("not an image (unrecognised format)", "missing file: /x.png",
                "bad request: body.temperature: ...", "task 'vqa' needs a question",
                "https://h/x answered HTTP 404", None, ""):
        assert not retryable(err), err
    assert [http_status(e) for e in ("bad request: x", "model: E", "quota: refused")] == [
        400, 500, 429]


def test_drop_rows_rewrites_parts_without_the_retryable_errors(tmp_path):
    out = OutputFolder(locate(str(tmp_path / "out")))
    schema = pa.schema([("id", pa.string()), ("error", pa.string())])
    writer = PartWriter(out, schema, rows_per_part=2)
    writer.add(pa.table({"id": ["a", "b"], "error": [None, "model: boom"]}, schema=schema))
    writer.add(pa.table({"id": ["c", "d"], "error": ["model: boom", "cannot read /d"]},
                        schema=schema))
    writer.add(pa.table({"id": ["e"], "error": ["not an image"]}, schema=schema))
    writer.flush()
    assert out.done_ids(retryable) == {"a", "e"} and len(out.done_ids()) == 5
    assert out.drop_rows(retryable) == 3
    assert out.done_ids() == {"a", "e"} and len(out.parts()) == 2  # the all-retry part went


def to_earlier_names(out: OutputFolder) -> None:
    """Rewrite every part as an earlier release wrote it (`output`, `answer` columns, and
    no `data/_columns` marker)."""
    old = {new: old for old, new in RENAMED.items()}
    for path in out.parts():
        t = pq.read_table(path)
        pq.write_table(t.rename_columns([old.get(c, c) for c in t.schema.names]), path)
    Path(out.data.join(COLUMNS_MARKER).path).unlink(missing_ok=True)


def test_an_earlier_releases_output_folder_reads_with_todays_names_and_upgrades(tmp_path):
    out = OutputFolder(locate(str(tmp_path / "out")))
    schema = pa.schema([("id", pa.string()), ("prediction", pa.string()),
                        ("reference", pa.string()), ("error", pa.string())])
    writer = PartWriter(out, schema, rows_per_part=2)
    writer.add(pa.table({"id": ["a", "b"], "prediction": ["red", None],
                         "reference": ["red", "blue"], "error": [None, "model: boom"]}))
    writer.add(pa.table({"id": ["c"], "prediction": ["x"], "reference": [None], "error": [None]}))
    writer.flush()
    to_earlier_names(out)
    assert all("output" in pq.read_schema(p).names for p in out.parts())
    want = {"id": ["a", "b", "c"], "prediction": ["red", None, "x"],
            "reference": ["red", "blue", None]}
    got = pa.Table.from_batches(list(out.batches(["id", "prediction", "reference"])))
    assert got.sort_by("id").to_pydict() == want
    assert out.done_ids(retryable) == {"a", "c"}
    assert out.upgrade() == 2 and out.upgrade() == 0
    assert all(pq.read_schema(p).names == schema.names for p in out.parts())
    assert (tmp_path / "out" / "data" / "_columns").exists()  # later runs read no part
    got = pa.Table.from_batches(list(out.batches(["id", "prediction", "reference"])))
    assert got.sort_by("id").to_pydict() == want
    to_earlier_names(out)
    assert out.drop_rows(retryable) == 1  # a retry rewrites the part under today's names
    assert [pq.read_schema(p).names for p in out.parts()].count(schema.names) == 1


class _Images(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the stdlib's name)
        data = image_bytes(7)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_http_images_only_from_allowed_hosts_and_never_from_private_addresses():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/x.png"
        _, why = decode_row({"path": url}, 16, 10_000)
        assert "not accepted here" in why and "image_hosts" in why
        _, why = decode_row({"path": url}, 16, 10_000, hosts=("127.0.0.1",))
        assert "loopback, private" in why and not retryable(why)  # a real server, refused
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ jobs on Ray


def batch_lines(tmp_path) -> list:
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "p.png").write_bytes(image_bytes(11))
    return [request("plain", data_url(0)),
            request("small-m", data_url(1), visual_tokens=2),
            request("short", data_url(2), max_tokens=1),
            request("by-path", "img/p.png"),
            request("caption", data_url(3), text=""),
            request("hot", data_url(4), temperature=1.0),
            request("corrupt", "data:image/png;base64," + base64.b64encode(b"xx").decode()),
            request("too-many", data_url(5), visual_tokens=10_000)]


def read_batch_output(out) -> tuple[dict, dict]:
    ok, bad = ([json.loads(x) for x in (out / name).read_text().splitlines()]
               for name in OUTPUT_FILES)
    ids = [x["custom_id"] for x in ok + bad]
    assert len(ids) == len(set(ids)), "every custom_id in exactly one line"
    return {x["custom_id"]: x for x in ok}, {x["custom_id"]: x for x in bad}


def test_openai_batch_file_in_and_out(ray_local, tmp_path):
    write_jsonl(tmp_path / "batch.jsonl", batch_lines(tmp_path))
    out = tmp_path / "out"
    args = [f"source={tmp_path / 'batch.jsonl'}", f"output={out}", "policy.default=4",
            "output_format=openai"]
    summary = annotate.main(config(*args))
    assert summary["rows"] == 8 and summary["errors"] == 3
    ok, bad = read_batch_output(out)
    assert sorted(ok) == ["by-path", "caption", "plain", "short", "small-m"]
    assert sorted(bad) == ["corrupt", "hot", "too-many"]
    for cid, line in ok.items():
        assert line["response"]["status_code"] == 200 and line["error"] is None
        body = ChatCompletion.model_validate(line["response"]["body"])  # OpenAI's own type
        assert body.choices[0].message.content is not None and body.model == "tiny"
        assert body.usage.completion_tokens >= 1
        extra = line["response"]["body"]["usage"]
        assert extra["visual_tokens"] == (2 if cid == "small-m" else 4) and extra["flops"] > 0
    short = ok["short"]["response"]["body"]
    assert short["usage"]["completion_tokens"] == 1 and short["choices"][0][
        "finish_reason"] == "length"
    for cid, line in bad.items():
        err = line["response"]["body"]["error"]
        assert line["response"]["status_code"] == 400 and err["message"], (cid, line)
    assert "temperature" in bad["hot"]["response"]["body"]["error"]["message"]
    rows = read_rows(out)
    assert rows["short"]["max_new_tokens"] == 1 and rows["plain"]["max_new_tokens"] > 1
    before = (out / OUTPUT_FILES[0]).read_text()
    again = annotate.main(config(*args))  # a resume with nothing left rewrites the same lines
    assert again["this_run"]["rows"] == 0
    assert [json.loads(x)["id"] for x in (out / OUTPUT_FILES[0]).read_text().splitlines()] == [
        json.loads(x)["id"] for x in before.splitlines()]


@pytest.mark.slow  # two jobs, ~14 s (the parts without Ray run in CI: the struct and
# mapping reading, the earlier release's names, sharded resume on S3 in test_annotate_s3)
def test_sharded_hugging_face_parquet_with_mapped_columns_resumes_across_shards(
        ray_local, tmp_path):
    shards = tmp_path / "hf"
    shards.mkdir()
    for k in range(3):
        ids = [f"s{k}-{i}" for i in range(4)]
        pq.write_table(pa.table({
            "question_id": ids, "query": ["What shape?"] * 4, "label": ["circle"] * 4,
            "image": [{"bytes": image_bytes(10 * k + i), "path": f"{i}.png"} for i in range(4)],
        }), shards / f"train-{k:05d}-of-00003.parquet")
    args = [f"source={shards}/train-*.parquet", f"output={tmp_path / 'out'}", "task=vqa",
            "columns.id=question_id", "columns.question=query", "columns.answer=label",
            "policy.default=2"]
    first = annotate.main(config(*args, "limit=5"))
    assert first["rows"] == 5
    to_earlier_names(OutputFolder(locate(str(tmp_path / "out"))))  # an earlier release's rows
    summary = annotate.main(config(*args))
    assert summary["rows"] == 12 and summary["this_run"]["rows"] == 7 and summary["errors"] == 0
    assert summary["accuracy"]["vqa"]["labelled"] == 12  # the earlier rows' references too
    rows = read_rows(tmp_path / "out")
    assert sorted(rows) == sorted(f"s{k}-{i}" for k in range(3) for i in range(4))
    assert all(r["question"] == "What shape?" and r["reference"] == "circle" for r in rows.values())
    assert_answered(rows["s2-3"], 2)


def test_retry_errors_asks_only_the_retryable_rows_again(ray_local, tmp_path):
    (tmp_path / "good.png").write_bytes(image_bytes(20))
    (tmp_path / "later.png").mkdir()  # a folder: "cannot read", which a retry may fix
    (tmp_path / "broken.png").write_bytes(b"not an image")
    write_jsonl(tmp_path / "m.jsonl", [{"id": n, "image": f"{n}.png", "task": "caption"}
                                       for n in ("good", "later", "broken")])
    args = [f"source={tmp_path / 'm.jsonl'}", f"output={tmp_path / 'out'}", "policy.default=2"]
    first = annotate.main(config(*args))
    assert first["errors"] == 2 and first["retryable_errors"] == 1
    (tmp_path / "later.png").rmdir()
    (tmp_path / "later.png").write_bytes(image_bytes(21))
    assert annotate.main(config(*args))["this_run"]["rows"] == 0  # errors count as done
    again = annotate.main(config(*args, "retry_errors=true"))
    assert again["this_run"]["rows"] == 1 and again["errors"] == 1
    rows = read_rows(tmp_path / "out")
    assert_answered(rows["later"], 2)
    assert_answered(rows["good"], 2)
    assert "not an image" in rows["broken"]["error"]


def test_bad_format_settings_fail_before_any_work(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "image": "a.png"}])
    src = f"source={tmp_path / 'm.jsonl'}"
    for bad, field in ((["output_format=csv"], "output_format"),
                       (["image_hosts=[http://x.org]"], "image_hosts"),
                       (["columns.colour=c"], "columns.colour")):
        with pytest.raises(ValueError, match=field):
            annotate.main(config(src, f"output={tmp_path / 'o'}", *bad))
    assert not (tmp_path / "o").exists()



@pytest.mark.slow  # Ray exports metrics every few seconds: ~15 s
def test_job_metrics_reach_rays_prometheus_endpoint(ray_local, tmp_path):
    import re
    import time
    import urllib.request

    from pipeline.annotate import job_id, output_folder

    write_jsonl(tmp_path / "m.jsonl", [{"id": str(i), "image": data_url(i), "task": "caption"}
                                       for i in range(3)]
                + [{"id": "bad", "image": "data:image/png;base64,AAAA", "task": "caption"}])
    cfg = config(f"source={tmp_path / 'm.jsonl'}", f"output={tmp_path / 'out'}",
                 "policy.default=2")
    summary = annotate.main(cfg)
    job = job_id(output_folder(cfg))
    port = ray_local._private.worker.global_worker.node.metrics_export_port
    want = {"rows": 4.0, "error_rows": 1.0, "flops": float(summary["flops"])}
    found: dict = {}
    end = time.monotonic() + 60
    while found != want and time.monotonic() < end:
        time.sleep(1)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        for name in want:
            pattern = (rf'^ray_mqt_annotate_{name}_total\{{[^}}]*job="{job}"[^}}]*'
                       rf'task="caption"[^}}]*\}} (\S+)$')
            if m := re.search(pattern, text.decode(), re.M):
                found[name] = float(m.group(1))
    assert found == want
