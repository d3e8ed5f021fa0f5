"""The Ray Serve application: an OpenAI-compatible endpoint in front of the engine.

Routes: `POST /v1/chat/completions` (pipeline/serve/openai.py says what it takes),
`GET /v1/models`, `GET /health`. Each replica holds one `Engine` (pipeline/engine.py, the
same class `mqt annotate` runs in its actors); requests are decoded as the batch job
decodes images (pipeline/decode.py) and answered in batches (`@serve.batch`, at most
`max_batch_size` requests or `batch_wait_s`): the engine runs vision and the MQT once per
batch at its largest m and the LM per (task, m) group, so an answer equals what
`mqt annotate` writes for the same image, question and m.

A request's m: its `visual_tokens` if given, else its image's `detail`: `low` and `high`
are m from the settings, `auto` the scheduler's plan for the question's task
(`pipeline.scheduler.prepare` at `auto_flops` per row; 0: the dearest m worth buying,
`cap_se`). `build_app(args)` is the import path of a Serve config file
(cluster/serve/mqt-smol.yaml); `mqt serve` (jobs/serve.py) runs the same application.
"""

# no `from __future__ import annotations`: FastAPI reads the route's parameter types at runtime
import asyncio
import hmac
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from mqt.config import check_m
from mqt.configtree import from_dict, to_dict
from mqt.load import ModelArgs, model_args, resolved_config, validate_model
from mqt.tasks import TASKS
from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pipeline.engine import Engine
from pipeline.scheduler import QuotaArgs, prepare
from pipeline.scheduler.budget import counted_rows
from pipeline.scheduler.policy import FixedPolicy, TokenPolicy
from pipeline.serve.images import ImageError, ImageRules, fetch
from pipeline.serve.openai import BadRequest, chunks, completion, completion_id, error, parse

REQUEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("task", pa.string()), ("question", pa.string()),
    ("options", pa.list_(pa.string())), ("answer", pa.string()), ("pixels", pa.binary()),
    ("error", pa.string()), ("m", pa.int32()), ("max_new_tokens", pa.int32()),
])  # pipeline.decode.DECODED_SCHEMA and a row's own m and answer length


@dataclass
class DetailArgs:
    """m per image `detail`: `high` 0 = M; `auto` 0 = planned (`ServeArgs.auto_flops`)."""

    low: int = 4
    high: int = 0
    auto: int = 0


@dataclass
class ServeArgs(ModelArgs):
    """What a replica serves and how it answers (the application's args)."""

    preset: str = "mqt-smol"
    name: str = ""  # the model's id in /v1/models and responses; "" = the preset
    detail: DetailArgs = field(default_factory=DetailArgs)
    # detail=auto: m per task as the scheduler plans it at this many FLOPs per request
    # (0: no limit, each task's dearest m worth buying on the calibration, quota.cap_se)
    auto_flops: float = 0.0
    calibration: str = ""  # the curves auto is planned on; "" = the shipped calibration
    max_tokens: int = 64  # the most new tokens a request may ask for
    max_batch_size: int = 16  # requests answered together
    batch_wait_s: float = 0.02  # how long a batch waits for more requests
    threads: int = 0  # torch threads per replica; 0 = torch's default
    max_pixels: int = DEFAULT_MAX_PIXELS
    images: ImageRules = field(default_factory=ImageRules)  # where images may come from
    # bearer tokens the endpoint accepts (none of either: open to whoever reaches it): the
    # name of an environment variable holding them, comma-separated, and/or a file with one
    # per line; read when a replica starts, never written into a config
    api_keys_env: str = ""
    api_keys_file: str = ""


def check(args: ServeArgs) -> TokenPolicy:
    """Everything checkable before a replica starts (errors name the field); returns the
    policy `detail=auto` answers with (planned here, once per process)."""
    validate_model(args)
    args.images.check()
    if args.max_tokens < 1 or args.max_batch_size < 1 or args.batch_wait_s < 0:
        raise ValueError("max_tokens and max_batch_size must be >= 1, batch_wait_s >= 0")
    if args.auto_flops < 0 or args.threads < 0 or args.max_pixels < 1:
        raise ValueError("auto_flops and threads must be >= 0, max_pixels >= 1")
    api_keys(args)  # set but empty or unreadable: fail here, not open the endpoint
    target = resolved_config(args)
    M = target.query.num_queries if target is not None else 0
    for name in ("low", "high", "auto"):
        if M and (name == "low" or getattr(args.detail, name)):
            check_m(f"detail.{name}", getattr(args.detail, name), M)
    if args.detail.auto:
        return auto_policy(args)
    try:  # planned on a calibration of another model, it may ask for m past this M
        planned = auto_policy(args)
        if M:
            planned.check(M)
    except ValueError as e:
        raise ValueError(f"detail.auto: planned on the calibration: {e}; give "
                         "detail.auto=m, or calibration= of this model") from None
    return planned


def auto_policy(args: ServeArgs) -> TokenPolicy:
    """detail=auto: `detail.auto` on every request, or the plan of the tasks this endpoint
    answers on the calibration, at `auto_flops` per row."""
    if args.detail.auto:
        return FixedPolicy(default=args.detail.auto)
    tasks = [t for t, x in TASKS.items() if x.scoring == "exact"]
    rows = counted_rows(dict.fromkeys(tasks, 1000))
    quota = args.auto_flops * len(rows) if args.auto_flops else 1e30
    budget = prepare(QuotaArgs(flops=quota, calibration=args.calibration), rows)
    return budget.plan.policy()


async def _json(request: Request):
    """The request's body as JSON (a 400 if it is not)."""
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest(None, "the body is not JSON") from None


def api_keys(args: ServeArgs) -> frozenset[str]:
    """The bearer tokens of `api_keys_env` and `api_keys_file` (empty: no keys asked)."""
    keys: set[str] = set()
    if args.api_keys_env:
        value = os.environ.get(args.api_keys_env, "")
        if not value.strip():
            raise ValueError(f"api_keys_env: the environment variable {args.api_keys_env} "
                             "is not set or empty")
        keys |= {k.strip() for k in value.split(",") if k.strip()}
    if args.api_keys_file:
        try:
            lines = Path(args.api_keys_file).read_text().splitlines()
        except OSError as e:
            raise ValueError(f"api_keys_file: cannot read {args.api_keys_file}: "
                             f"{e.strerror}") from None
        found = {x.strip() for x in lines if x.strip() and not x.startswith("#")}
        if not found:
            raise ValueError(f"api_keys_file: {args.api_keys_file} holds no key")
        keys |= found
    return frozenset(keys)


def unauthorized(request: Request, keys: frozenset[str]) -> JSONResponse | None:
    """A 401 unless the request carries one of `keys` as its bearer token (no keys: None)."""
    if not keys:
        return None
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and any(hmac.compare_digest(token, k) for k in keys):
        return None
    body = error("a valid API key is needed: Authorization: Bearer <key>")
    body["error"]["code"] = "invalid_api_key"
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})


app = FastAPI(title="mqt serve")


@serve.deployment(max_ongoing_requests=16)
@serve.ingress(app)
class MQTServer:
    """One replica: one engine, batched answers, the OpenAI routes."""

    def __init__(self, args: dict):
        self.args = from_dict(ServeArgs, args)
        auto = check(self.args)  # before the model loads: a bad setting fails fast
        self.engine = Engine(model_args(self.args), FixedPolicy(), threads=self.args.threads)
        cfg = self.engine.model.cfg
        self.M, self.size = self.engine.model.num_queries, cfg.vision.image_size
        self.auto = auto.bind(self.M)
        self.name = self.args.name or self.args.preset
        self.keys = api_keys(self.args)
        self.answer.set_max_batch_size(self.args.max_batch_size)
        self.answer.set_batch_wait_timeout_s(self.args.batch_wait_s)

    @app.get("/health")
    def health(self) -> dict:
        return {"status": "ok", "model": self.name}

    @app.get("/v1/models")
    def models(self, request: Request):
        if (denied := unauthorized(request, self.keys)) is not None:
            return denied
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": 0,
                                             "owned_by": "mqt", "max_visual_tokens": self.M}]}

    @app.post("/v1/chat/completions")
    async def chat(self, request: Request):
        if (denied := unauthorized(request, self.keys)) is not None:
            return denied
        try:
            req = parse(await _json(request), self.args.max_tokens, self.M)
            pixels = await asyncio.to_thread(self._pixels, req)
        except BadRequest as e:
            return JSONResponse(error(e), status_code=e.status)
        limit = req.max_new_tokens or TASKS[req.task].max_new_tokens
        row = await self.answer({"id": completion_id(), "task": req.task,
                                 "question": req.question, "options": None, "answer": None,
                                 "pixels": pixels, "error": None, "m": self._m(req),
                                 "max_new_tokens": limit})
        if row["error"]:
            return JSONResponse(error(row["error"], "server_error"), status_code=500)
        if req.stream:
            return StreamingResponse(chunks(row["id"], self.name, row, limit,
                                            req.include_usage), media_type="text/event-stream")
        return completion(row["id"], self.name, row, limit)

    def _pixels(self, req) -> bytes:
        """The request's image, fetched and decoded at the encoder's size (as the batch
        job's decode stage does)."""
        try:
            data = fetch(req.image_url, self.args.images)
            return decode_image(data, self.size, self.args.max_pixels).tobytes()
        except (ImageError, DecodeError) as e:
            raise BadRequest(req.image_param, str(e)) from None

    def _m(self, req) -> int:
        if req.visual_tokens is not None:
            return req.visual_tokens
        if req.detail == "low":
            return self.args.detail.low
        if req.detail == "high":
            return self.args.detail.high or self.M
        return self.auto.choose([req.task], [req.question])[0]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def answer(self, rows: list[dict]) -> list[dict]:
        """Answer a batch of requests' rows with the engine, off the event loop (so that the
        next batch gathers while this one runs)."""
        table = pa.Table.from_pylist(rows, schema=REQUEST_SCHEMA)
        out = await asyncio.to_thread(self.engine, table)
        return out.to_pylist()


def build_app(args: dict):
    """The application, from a Serve config file's `args` (ServeArgs fields, checked here
    before any replica starts: a bad field fails the deploy naming it)."""
    settings = from_dict(ServeArgs, args)
    check(settings)
    return MQTServer.bind(to_dict(settings))
