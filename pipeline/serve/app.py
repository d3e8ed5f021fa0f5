"""The Ray Serve application: an OpenAI-compatible endpoint in front of the engine.

Routes: `POST /v1/chat/completions` (pipeline/serve/openai.py says what it takes),
`GET /v1/models`, `GET /health`. Each replica holds one `Engine` (pipeline/engine.py, the
same class `mqt annotate` runs in its actors); requests are decoded as the batch job
decodes images (pipeline/decode.py) and answered in batches (`@serve.batch`, at most
`max_batch_size` requests or `batch_wait_s`): the engine runs vision and the MQT once per
batch at its largest m and the LM per (task, m) group, so an answer equals what
`mqt annotate` writes for the same image, question and m.

A request's m: its `visual_tokens` if given, else its image's `detail`: `low` and `high`
are m from the settings, `auto` the scheduler's plan for the question's task and kind
(`pipeline.scheduler.prepare` with `quota.by=kind` over the calibration's questions, at
`auto_flops` per row; 0: the dearest m worth buying, `cap_se`).

With `quota.flops`, each API key (or all callers together) may spend that many FLOPs per
window of `quota.window_s` seconds (pipeline/scheduler/windows.py: a batch job's `Ledger`
per caller and window, in one `QuotaLedger` deployment that every replica calls). A request
reserves its upper bound (the cost model at its most new tokens) before it is answered and
is charged what it cost after; as a window's budget runs low, `auto` requests step down to
smaller m (powers of two below their planned m) before any request is refused, and a
refused one is a 429 with `Retry-After` (the seconds until the window ends).

`build_app(args)` is the import path of a Serve config file (cluster/serve/mqt-smol.yaml);
`mqt serve` (jobs/serve.py) runs the same application.
"""

# no `from __future__ import annotations`: FastAPI reads the route's parameter types at runtime
import asyncio
import hmac
import json
import math
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
from pipeline.decode import DECODED_SCHEMA, DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pipeline.engine import Engine
from pipeline.scheduler import InfeasibleQuota, QuotaArgs, prepare
from pipeline.scheduler.budget import counted_rows, results_path
from pipeline.scheduler.cascade import load_questions
from pipeline.scheduler.kinds import GroupedPolicy
from pipeline.scheduler.policy import FixedPolicy, TokenPolicy, first_m
from pipeline.scheduler.windows import Grant, WindowLedgers, caller_id
from pipeline.serve.images import ImageError, ImageRules, fetch
from pipeline.serve.openai import (
    BadRequest,
    Pieces,
    Stream,
    completion,
    completion_id,
    error,
    parse,
)


@dataclass
class DetailArgs:
    """m per image `detail`: `high` 0 = M; `auto` 0 = planned (`ServeArgs.auto_flops`)."""

    low: int = 4
    high: int = 0
    auto: int = 0


@dataclass
class WindowQuota:
    """A compute budget that renews every window (pipeline/scheduler/windows.py)."""

    flops: float = 0.0  # per window and caller; 0: no quota
    window_s: float = 3600.0  # windows aligned to the epoch (3600: full hours)
    per_key: bool = True  # each API key its own budget; false (or no keys): one for all
    # auto steps down to a smaller m when the window has left less than this many more
    # requests' worth at the m it would take
    headroom: int = 20
    state_dir: str = ""  # keep each window's spend here, so that a restart remembers it

    def check(self) -> None:
        if self.flops < 0 or not math.isfinite(self.flops):
            raise ValueError(f"quota.flops must be a finite number >= 0, got {self.flops!r}")
        if self.window_s <= 0:
            raise ValueError(f"quota.window_s must be > 0, got {self.window_s!r}")
        if self.headroom < 1:
            raise ValueError(f"quota.headroom must be >= 1, got {self.headroom!r}")


@dataclass
class ServeArgs(ModelArgs):
    """What a replica serves and how it answers (the application's args)."""

    preset: str = "mqt-smol"
    name: str = ""  # the model's id in /v1/models and responses; "" = the preset
    detail: DetailArgs = field(default_factory=DetailArgs)
    # detail=auto: m per task as the scheduler plans it at this many FLOPs per request
    # (0: no limit, each task's dearest m worth buying on the calibration, quota.cap_se)
    auto_flops: float = 0.0
    # plan auto per question kind (task:kind groups learned from the calibration's
    # per-question results) or per task
    auto_by: str = "kind"
    calibration: str = ""  # the curves auto is planned on; "" = the shipped calibration
    max_tokens: int = 64  # the most new tokens a request may ask for
    max_batch_size: int = 16  # requests answered together
    batch_wait_s: float = 0.02  # how long a batch waits for more requests
    threads: int = 0  # torch threads per replica; 0 = torch's default
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_body_bytes: int = 16 << 20  # a request body past this is a 413
    images: ImageRules = field(default_factory=ImageRules)  # where images may come from
    # bearer tokens the endpoint accepts (none of either: open to whoever reaches it): the
    # name of an environment variable holding them, comma-separated, and/or a file with one
    # per line; read when a replica starts, never written into a config
    api_keys_env: str = ""
    api_keys_file: str = ""
    quota: WindowQuota = field(default_factory=WindowQuota)


def check(args: ServeArgs) -> TokenPolicy:
    """Everything checkable before a replica starts (errors name the field); returns the
    policy `detail=auto` answers with (planned here, once per process)."""
    validate_model(args)
    args.images.check()
    args.quota.check()
    if args.auto_by not in ("kind", "task"):
        raise ValueError(f"auto_by must be kind or task, got {args.auto_by!r}")
    if args.max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {args.max_body_bytes!r}")
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
    planned = auto_policy(args)
    try:  # planned on a calibration of another model, it may ask for m past this M
        if M and not args.detail.auto:  # a fixed detail.auto was checked above
            planned.check(M)
    except ValueError as e:
        raise ValueError(f"detail.auto: planned on the calibration: {e}; give "
                         "detail.auto=m, or calibration= of this model") from None
    return planned


def auto_policy(args: ServeArgs) -> TokenPolicy:
    """detail=auto: `detail.auto` on every request, or the plan on the calibration at
    `auto_flops` per row of the tasks this endpoint answers: per (task, question kind)
    group with auto_by=kind, over the calibration's own questions (their mix of kinds), else
    per task."""
    if args.detail.auto:
        return FixedPolicy(default=args.detail.auto)
    tasks = {t for t, x in TASKS.items() if x.scoring == "exact"}
    quota = QuotaArgs(flops=1.0, calibration=args.calibration, by=args.auto_by)
    if args.auto_by == "kind":
        path = results_path(quota)
        if not path.is_file():
            raise ValueError(f"auto_by=kind: no per-question results at {path} to learn the "
                             "question kinds from; give auto_by=task")
        rows = [(q.id, q.task, q.text) for q in load_questions(path) if q.task in tasks]
    else:
        rows = counted_rows(dict.fromkeys(sorted(tasks), 1000))
    quota.flops = args.auto_flops * len(rows) if args.auto_flops else 1e30
    try:
        budget = prepare(quota, rows)
    except InfeasibleQuota as e:
        cheapest = e.minimum / len(rows)
        raise ValueError(f"auto_flops: {args.auto_flops:.3g} FLOPs per request cannot pay for "
                         f"the cheapest m of every kind of question; give at least "
                         f"{cheapest:.3g}") from None
    policy = budget.plan.policy()
    return GroupedPolicy(budget.groups, policy) if budget.groups is not None else policy


def ladder(m: int) -> list[int]:
    """The m an `auto` request may be answered at under a tightening quota, largest first:
    its planned m, then the powers of two below it."""
    return [m] + [2 ** k for k in range(math.ceil(math.log2(m)) - 1, -1, -1) if 2 ** k < m]


async def _json(request: Request, limit: int):
    """The request's body as JSON (a 413 past `limit` bytes, a 400 if it is not JSON)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(None, f"the body is {declared} bytes, more than the {limit} allowed",
                         status=413)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise BadRequest(None, f"the body is more than the {limit} bytes allowed",
                             status=413)
    try:
        return json.loads(body)
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


def bearer(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else ""


def unauthorized(request: Request, keys: frozenset[str]) -> JSONResponse | None:
    """A 401 unless the request carries one of `keys` as its bearer token (no keys: None)."""
    if not keys:
        return None
    token = bearer(request)
    if token and any(hmac.compare_digest(token, k) for k in keys):
        return None
    body = error("a valid API key is needed: Authorization: Bearer <key>")
    body["error"]["code"] = "invalid_api_key"
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})


def refused(grant: Grant) -> JSONResponse:
    """A 429: the caller's compute budget for this window is spent."""
    wait = max(1, math.ceil(grant.retry_after_s))
    body = error(f"the compute quota of this window is spent; it renews in {wait} s",
                 "rate_limit_error")
    body["error"]["code"] = "quota_exceeded"
    return JSONResponse(body, status_code=429, headers={"Retry-After": str(wait)})


app = FastAPI(title="mqt serve")


@serve.deployment(num_replicas=1, max_ongoing_requests=1024,
                  ray_actor_options={"num_cpus": 0})
class QuotaLedger:
    """The endpoint's compute quota, one for all its replicas: `WindowLedgers` behind async
    methods (each runs whole on the replica's event loop, so calls never interleave)."""

    def __init__(self, quota: dict):
        q = from_dict(WindowQuota, quota)
        self.windows = WindowLedgers(q.flops, q.window_s, q.headroom, q.state_dir or None)

    async def reserve(self, who: str, key: str, offers: list, auto: bool) -> Grant:
        return self.windows.reserve(who, key, [tuple(o) for o in offers], auto)

    async def commit(self, key: str, flops: float) -> None:
        self.windows.commit(key, flops)

    async def release(self, key: str) -> None:
        self.windows.release(key)


@serve.deployment(max_ongoing_requests=16)
@serve.ingress(app)
class MQTServer:
    """One replica: one engine, batched answers, the OpenAI routes."""

    def __init__(self, args: dict, ledger=None):
        self.args = from_dict(ServeArgs, args)
        self.ledger = ledger  # a QuotaLedger handle with quota.flops, else None
        auto = check(self.args)  # before the model loads: a bad setting fails fast
        self.streams: dict[str, tuple] = {}  # row id -> (event loop, token queue)
        self.engine = Engine(model_args(self.args), FixedPolicy(), threads=self.args.threads,
                             on_tokens=self._tokens)
        self.stops = set(self.engine.model.stop_token_ids())
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
            req = parse(await _json(request, self.args.max_body_bytes), self.args.max_tokens,
                        self.M)
            pixels = await asyncio.to_thread(self._pixels, req)
        except BadRequest as e:
            return JSONResponse(error(e), status_code=e.status)
        limit = req.max_new_tokens or TASKS[req.task].max_new_tokens
        row = {"id": completion_id(), "task": req.task, "question": req.question,
               "options": None, "answer": None, "pixels": pixels, "error": None,
               "m": self._m(req), "max_new_tokens": limit}
        if self.ledger is not None:
            grant = await self._reserve(request, req, row)
            if grant.m is None:
                return refused(grant)
            row["m"] = grant.m
        if req.stream:  # tokens go out as the batch makes them
            queue: asyncio.Queue = asyncio.Queue()
            self.streams[row["id"]] = (asyncio.get_running_loop(), queue)
            task = asyncio.ensure_future(self._answered(row))
            return StreamingResponse(self._stream(task, queue, row["id"], req, limit),
                                     media_type="text/event-stream")
        row = await self._answered(row)
        if row["error"]:
            return JSONResponse(error(row["error"], "server_error"), status_code=500)
        return completion(row["id"], self.name, row, limit)

    async def _answered(self, row: dict) -> dict:
        """The row answered in a batch and, with a quota, charged what it cost (nothing if
        it failed)."""
        try:
            out = await self.answer(row)
        except BaseException:
            if self.ledger is not None:
                await self.ledger.release.remote(row["id"])
            raise
        finally:
            self.streams.pop(row["id"], None)
        if self.ledger is not None:
            if out["flops"] is not None:
                await self.ledger.commit.remote(out["id"], out["flops"])
            else:
                await self.ledger.release.remote(out["id"])
        return out

    async def _stream(self, task: asyncio.Future, queue: asyncio.Queue, cid: str, req,
                      limit: int):
        """Server-sent events: the role, each settled piece of the answer as its tokens come
        from the engine, the rest once the answer is done, the finish reason (and usage)."""
        s, pieces = Stream(cid, self.name), Pieces(self.engine.model.tokenizer, self.stops)
        yield s.role()
        try:
            while not task.done() or not queue.empty():
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    continue
                if piece := pieces.add(get.result()):
                    yield s.content(piece)
            row = task.result()
        except Exception as e:  # noqa: BLE001 (the status was sent: the error goes as an event)
            for event in s.failed(f"{type(e).__name__}: {e}"):
                yield event
            return
        if row["error"]:
            for event in s.failed(row["error"]):
                yield event
            return
        if rest := pieces.rest(row["prediction"]):
            yield s.content(rest)
        for event in s.end(row, limit, req.include_usage):
            yield event

    def _tokens(self, ids: list[str], tokens: list[int]) -> None:
        """The engine's step (in its thread): each streamed row's token to its queue."""
        for i, t in zip(ids, tokens, strict=True):
            if (stream := self.streams.get(i)) is not None:
                stream[0].call_soon_threadsafe(stream[1].put_nowait, t)

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
        return first_m(self.auto.choose([req.task], [req.question])[0])

    def _auto(self, req) -> bool:
        return req.visual_tokens is None and req.detail == "auto"

    async def _reserve(self, request: Request, req, row: dict) -> Grant:
        """The caller's grant for this request: its m (stepped down if it is `auto` and the
        window runs low), its upper bound reserved; or a refusal."""
        ms = ladder(row["m"]) if self._auto(req) else [row["m"]]
        offers = [(m, self.engine.bound(row, m)) for m in ms]
        who = caller_id(bearer(request) if self.keys and self.args.quota.per_key else None)
        return await self.ledger.reserve.remote(who, row["id"], offers, self._auto(req))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def answer(self, rows: list[dict]) -> list[dict]:  # one batch at a time
        """Answer a batch of requests' rows with the engine, off the event loop (so that the
        next batch gathers while this one runs)."""
        table = pa.Table.from_pylist(rows, schema=DECODED_SCHEMA)  # with each row's m
        out = await asyncio.to_thread(self.engine, table)
        return out.to_pylist()


def build_app(args: dict):
    """The application, from a Serve config file's `args` (ServeArgs fields, checked here
    before any replica starts: a bad field fails the deploy naming it)."""
    settings = from_dict(ServeArgs, args)
    check(settings)
    return bind(MQTServer, settings)


def bind(server, settings: ServeArgs):
    """`server` (MQTServer, or it with options) bound to its args and, with a quota, to the
    application's QuotaLedger."""
    ledger = QuotaLedger.bind(to_dict(settings.quota)) if settings.quota.flops else None
    return server.bind(to_dict(settings), ledger)
