"""The endpoint over real HTTP on 127.0.0.1: Ray Serve, the tiny random model (its answers
are noise but deterministic). httpx and the official `openai` client; answers, usage, m
per request, streams, the 4xx of bad requests, concurrent requests, and the same answer
`mqt annotate` writes for the same image, question and m."""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pyarrow.parquet as pq
import pytest
from conftest import free_port
from PIL import Image

from jobs import serve as serve_job
from jobs.cli import configure
from pipeline.annotate import AnnotateConfig, PolicyArgs, annotate

TINY = ["preset=tiny", "checkpoint=none", "cpus_per_replica=0.5", "detail.low=1",
        "detail.auto=2", "max_batch_size=8", "batch_wait_s=0.05"]


def png(seed: int) -> bytes:
    pixels = (np.random.default_rng(seed).random((40, 40, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def ask(base: str, image: str, question: str = "What colour is it?", detail: str = "",
        **more) -> dict:
    """A chat request for one image and question (`base` unused: requests read as calls)."""
    content = ([{"type": "text", "text": question}] if question else []) + [
        {"type": "image_url", "image_url": {"url": image, **({"detail": detail} if detail
                                                              else {})}}]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **more}


@pytest.fixture(scope="module")
def endpoint(ray_local, tmp_path_factory):
    """http://127.0.0.1:PORT of the application `mqt serve` deploys, with local paths under
    a temp folder allowed; deleted at the end."""
    from ray import serve

    folder = tmp_path_factory.mktemp("images")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    cfg = configure(serve_job, None, [*TINY, "images.schemes=[data,path]",
                                      f"images.roots=[{folder}]"], None)
    serve_job.validate(cfg)
    serve.run(serve_job.application(cfg), name="mqt", route_prefix="/")
    yield f"http://127.0.0.1:{port}", folder
    serve.delete("mqt")
    serve.shutdown()


def post(base: str, body, **kw) -> httpx.Response:
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120, **kw)


def test_health_and_models(endpoint):
    base, _ = endpoint
    assert httpx.get(f"{base}/health").json()["status"] == "ok"
    models = httpx.get(f"{base}/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_visual_tokens"] == 16


def test_an_answer_at_each_detail_and_at_the_requested_m(endpoint):
    base, _ = endpoint
    image = data_url(png(1))
    seen = {}
    for label, extra, m in (("low", {"detail": "low"}, 1), ("high", {"detail": "high"}, 16),
                            ("auto", {}, 2), ("asked", {"visual_tokens": 7}, 7)):
        r = post(base, ask(base, image, max_tokens=4, **extra))
        assert r.status_code == 200, r.text
        c = r.json()
        usage = c["usage"]
        assert c["object"] == "chat.completion" and c["id"].startswith("chatcmpl-")
        assert usage["visual_tokens"] == m, label
        assert usage["completion_tokens"] <= 4 and usage["flops"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert usage["prompt_tokens"] > m  # the question's text tokens and the m image tokens
        seen[m] = usage["flops"]
    assert seen[1] < seen[2] < seen[7] < seen[16]  # fewer visual tokens, less compute


def test_the_answer_is_what_annotate_writes_for_the_same_row(endpoint, tmp_path):
    base, folder = endpoint
    data = png(2)
    path = folder / "same.png"
    path.write_bytes(data)
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": str(path), "task": "vqa",
                                    "question": "What shape is it?"}) + "\n")
    out = tmp_path / "out"
    annotate(AnnotateConfig(preset="tiny", checkpoint="none", source=str(manifest),
                            output=str(out), policy=PolicyArgs(m={"vqa": 5}),
                            cpus_per_actor=0.5, progress=False))
    written = pq.read_table(out / "data").to_pylist()[0]
    for image in (data_url(data), str(path)):  # a data: URL and an allowed path
        c = post(base, ask(base, image, "What shape is it?", visual_tokens=5)).json()
        assert c["choices"][0]["message"]["content"] == written["prediction"]
        assert c["usage"]["flops"] == written["flops"]
        assert c["usage"]["completion_tokens"] == written["new_tokens"]


def test_a_stream_sends_the_answer_piece_by_piece_then_done(endpoint):
    base, _ = endpoint
    body = ask(base, data_url(png(3)), visual_tokens=3, max_tokens=8)
    plain = post(base, body).json()
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=120,
                      json={**body, "stream": True,
                            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(x[len("data: "):]) for x in lines[:-1]]
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks
              if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert "".join(pieces) == plain["choices"][0]["message"]["content"]
    assert len(pieces) > 1  # token by token, not the whole answer at the end
    assert chunks[-1]["usage"] == plain["usage"]


@pytest.mark.parametrize("change, status, param", [
    (lambda b: "not json", 400, None),
    (lambda b: {**b, "temperature": 0.5}, 400, "temperature"),
    (lambda b: {**b, "visual_tokens": 17}, 400, "visual_tokens"),
    (lambda b: {**b, "max_tokens": 65}, 400, "max_tokens"),
    (lambda b: {**b, "messages": []}, 400, "messages"),
    (lambda b: ask("", data_url(b"not an image")), 400, "messages[0].content[1].image_url"),
    (lambda b: ask("", "/etc/hostname"), 400, "messages[0].content[1].image_url"),
    (lambda b: ask("", "http://169.254.169.254/latest/meta-data"), 400,
     "messages[0].content[1].image_url"),
])
def test_bad_requests_are_4xx_naming_the_field(endpoint, change, status, param):
    base, _ = endpoint
    body = change(ask(base, data_url(png(4))))
    r = (httpx.post(f"{base}/v1/chat/completions", content=body, timeout=60)
         if isinstance(body, str) else post(base, body))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_concurrent_requests_are_answered_as_one_at_a_time(endpoint):
    base, _ = endpoint
    bodies = [ask(base, data_url(png(10 + i % 4)), visual_tokens=1 + i % 3, max_tokens=3)
              for i in range(12)]
    alone = [post(base, b).json()["choices"][0]["message"]["content"] for b in bodies[:4]]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda b: post(base, b), bodies))
    assert all(r.status_code == 200 for r in together)
    # batched with others at other m, each answer is still its own
    assert [r.json()["choices"][0]["message"]["content"] for r in together[:4]] == alone


def test_the_openai_client(endpoint):
    base, _ = endpoint
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    image = data_url(png(5))
    messages = ask(base, image)["messages"]
    c = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4,
                                       extra_body={"visual_tokens": 4})
    assert c.usage.model_extra["visual_tokens"] == 4 and c.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4,
                                            extra_body={"visual_tokens": 4}, stream=True)
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    assert text == c.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=messages, temperature=1.0)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"


def test_the_serve_config_file_parses_as_ray_serve_reads_it():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(__file__).resolve().parents[3] / "cluster" / "serve" / "mqt-smol.yaml"
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = config.applications
    assert app.import_path == "pipeline.serve.app:build_app"
    assert app.deployments[0].name == "MQTServer"
    from pipeline.serve.app import build_app

    assert build_app(app.args) is not None  # the args are ServeArgs, checked
    with pytest.raises(ValueError, match="detail.low"):
        build_app({**app.args, "detail": {"low": 999}})


def test_settings_of_keys_are_checked(tmp_path):
    """Keys come from a file or an environment variable (never from the repo or the
    config); set but empty or unreadable fails before the endpoint opens."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="api_keys_file"):
        serve_job.validate(configure(serve_job, None, [*TINY, f"api_keys_file={empty}"], None))
    with pytest.raises(ValueError, match="api_keys_env"):
        serve_job.validate(configure(serve_job, None, [*TINY, "api_keys_env=MQT_NO_SUCH_VAR"],
                                     None))


def test_a_body_over_the_limit_is_a_413(endpoint):
    base, _ = endpoint
    big = ask(base, "data:image/png;base64," + "A" * (17 << 20))  # past the 16 MiB default
    r = post(base, big)
    assert r.status_code == 413 and "bytes" in r.json()["error"]["message"]
    assert post(base, ask(base, data_url(png(4)), max_tokens=2)).status_code == 200


@pytest.fixture(scope="module")
def limited(endpoint, tmp_path_factory):
    """An application with two API keys, a compute quota per key and window, auto at m = 16,
    one request at a time per replica and one waiting: (url, the FLOP bound of one request
    per m, the quota)."""
    from ray import serve

    from mqt.load import model_args
    from pipeline.engine import Engine
    from pipeline.scheduler.policy import FixedPolicy

    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text("key-a\nkey-b\nkey-c\n")
    base, _ = endpoint
    settings = [*TINY, f"api_keys_file={keys}", "detail.auto=16", "max_batch_size=1",
                "max_ongoing_requests=1", "max_queued_requests=1"]
    engine = Engine(model_args(configure(serve_job, None, settings, None)), FixedPolicy())
    row = {"task": "vqa", "question": "What colour is it?", "options": None,
           "max_new_tokens": 2}
    bound = {m: engine.bound(row, m) for m in (1, 2, 4, 8, 16)}
    quota = 16 * bound[16]
    cfg = configure(serve_job, None, [*settings, f"quota.flops={quota}", "quota.headroom=3"],
                    None)
    serve_job.validate(cfg)
    serve.run(serve_job.application(cfg), name="limited", route_prefix="/limited")
    yield f"{base}/limited", bound, quota
    serve.delete("limited")


def key(name: str) -> dict:
    return {"Authorization": f"Bearer key-{name}"}


def test_with_api_keys_no_key_or_a_wrong_one_is_a_401(limited):
    """The keys file holds key-a, key-b, key-c; the health route stays open."""
    url, _, _ = limited
    body = ask(url, data_url(png(6)), max_tokens=2, visual_tokens=1)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "key-c"}):
        r = post(url, body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert post(url, body, headers=key("c")).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200


def test_a_full_queue_sheds_load_at_once(limited):
    url, _, _ = limited
    body = ask(url, data_url(png(20)), visual_tokens=1, max_tokens=2)
    with ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda _: post(url, body, headers=key("c")).status_code,
                              range(10)))
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1


def test_auto_steps_down_as_the_quota_runs_low_then_a_429_with_retry_after(limited):
    url, bound, quota = limited
    body = ask(url, data_url(png(21)), max_tokens=2)  # detail auto: planned m = 16
    ms, spent = [], 0
    for _ in range(60):
        r = post(url, body, headers=key("a"))
        if r.status_code != 200:
            break
        usage = r.json()["usage"]
        ms.append(usage["visual_tokens"])
        spent += usage["flops"]
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "quota_exceeded"
    assert 1 <= int(r.headers["Retry-After"]) <= 3600
    assert ms[0] == 16 and ms == sorted(ms, reverse=True) and ms[-1] == 1
    # never past the quota, and refused only once what is left cannot pay for m = 1
    assert quota - bound[1] < spent <= quota
    # a request with its own m is refused too; another key has its own budget
    fixed = ask(url, data_url(png(21)), visual_tokens=16, max_tokens=2)
    assert post(url, fixed, headers=key("a")).status_code == 429
    r = post(url, body, headers=key("b"))
    assert r.status_code == 200 and r.json()["usage"]["visual_tokens"] == 16
