"""OpenAI Batch API files: request lines in, output lines out.

A Batch API input file is JSONL with one request per line:

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "mqt-smol", "max_tokens": 8, "messages": [{"role": "user", "content": [
         {"type": "text", "text": "What shape is in the image?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}]}}

`pipeline.sources` recognises such a file by its first line (`custom_id` and `body`) and
reads each line with `request_row`: `custom_id` is the row's id; the body is read as the
served endpoint reads a request (`pipeline.serve.openai.parse`: one user turn with one
image, greedy decoding; `max_tokens` or `max_completion_tokens` is the row's answer length,
an extra `visual_tokens` its m, an extra `task` its task). A line the endpoint would refuse
becomes an error row whose reason names the field.

With `output_format=openai` a job ends by writing `openai/output.jsonl` (answered rows)
and `openai/errors.jsonl` (error rows) from its Parquet parts (`write_output`), one line
per row in the Batch API's output format: `{id, custom_id, response: {status_code,
request_id, body}, error: null}`. An answer's body is a `chat.completion` whose usage adds
`visual_tokens` and `flops`; an error row's body is OpenAI's error object, with the status
of `pipeline.errors.http_status` (400 the input's, 429 the quota's, 500 the others). Both
files are rewritten whole from the parts at the end of every run, so after a resume every
custom_id is in exactly one line of one of them, and ids in a file are stable
(derived from the custom_id). Pure Python, no Ray.
"""

from __future__ import annotations

import hashlib
import json
import time

from mqt.tasks import Task
from pipeline.errors import http_status
from pipeline.serve.openai import BadRequest, completion, parse
from pipeline.storage import open_whole
from pipeline.writer import OutputFolder

CHAT_URL = "/v1/chat/completions"
OUTPUT_FILES = ("openai/output.jsonl", "openai/errors.jsonl")
_COLUMNS = ("id", "task", "prediction", "error", "prompt_tokens", "visual_tokens", "new_tokens",
            "flops", "max_new_tokens")


def is_request(obj) -> bool:
    """Is this (the first line of a JSONL file) a Batch API request?"""
    return isinstance(obj, dict) and "custom_id" in obj and "body" in obj


def request_row(r: dict, max_new_tokens: int) -> dict:
    """A request line as a manifest row {id, image, task, question, visual_tokens,
    max_new_tokens}, or a row with `_error` (the reason); `max_new_tokens`: the most a row
    may ask for. M is checked later, by the engine that knows it."""
    cid = r.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return {"id": f"line:{json.dumps(r)[:80]}", "image": None,
                "_error": f"bad request: custom_id must be a non-empty string, got {cid!r}"}
    try:
        if r.get("method", "POST") != "POST":
            raise BadRequest("method", f"must be POST, got {r.get('method')!r}")
        if r.get("url") != CHAT_URL:
            raise BadRequest("url", f"must be {CHAT_URL}, got {r.get('url')!r}")
        req = parse(r.get("body"), max_new_tokens, 2**31 - 1)
        if req.stream:
            raise BadRequest("body.stream", "a batch answers whole: leave it out or false")
    except BadRequest as e:
        return {"id": cid, "image": None, "_error": f"bad request: {_in_body(e)}"}
    return {"id": cid, "image": req.image_url, "task": req.task, "question": req.question,
            "visual_tokens": req.visual_tokens, "max_new_tokens": req.max_new_tokens}


def _in_body(e: BadRequest) -> str:
    """The reason, its field named as it is in the line (`body.messages[0]...`)."""
    if e.param is None:
        return f"body: {e.message}"
    inside = e.param in ("method", "url") or e.param.startswith("body.")
    return f"{e.param if inside else 'body.' + e.param}: {e.message}"


def _hex(custom_id: str, salt: str) -> str:
    return hashlib.sha1(f"{salt}:{custom_id}".encode()).hexdigest()[:24]


def output_line(row: dict, model: str, tasks: dict[str, Task], created: int) -> dict:
    """The Batch API output line of one written row (OUTPUT_SCHEMA columns)."""
    cid = row["id"]
    err = row.get("error")
    if err:
        status = http_status(err)
        kind = "invalid_request_error" if status == 400 else (
            "rate_limit_error" if status == 429 else "server_error")
        body = {"error": {"message": err, "type": kind, "param": None, "code": None}}
    else:
        task = tasks.get(row["task"])
        limit = row.get("max_new_tokens") or (task.max_new_tokens if task else 0)
        if task is None or task.scoring != "exact":  # a chosen option never runs out of length
            limit = 2**31 - 1
        status, body = 200, completion(f"chatcmpl-{_hex(cid, 'c')}", model, row, limit)
        body["created"] = created
    return {"id": f"batch_req_{_hex(cid, 'b')}", "custom_id": cid,
            "response": {"status_code": status, "request_id": f"req_{_hex(cid, 'r')}",
                         "body": body},
            "error": None}


def write_output(out: OutputFolder, model: str, tasks: dict[str, Task]) -> tuple[int, int]:
    """Write `openai/output.jsonl` and `openai/errors.jsonl` from every part of `out` (one
    part in memory at a time); returns (answer lines, error lines)."""
    created, counts = int(time.time()), [0, 0]
    with open_whole(out.loc.join(OUTPUT_FILES[0])) as ok, \
            open_whole(out.loc.join(OUTPUT_FILES[1])) as bad:
        for batch in out.batches(list(_COLUMNS), missing_ok=True):
            for row in batch.to_pylist():
                failed = bool(row.get("error"))
                line = json.dumps(output_line(row, model, tasks, created)) + "\n"
                (bad if failed else ok).write(line.encode())
                counts[failed] += 1
    return counts[0], counts[1]
