"""The OpenAI Chat Completions API as the endpoint speaks it: requests in, responses out.

`parse(body, ...)` turns a `POST /v1/chat/completions` body into a `ChatRequest`: the one
user turn's text and image (`image_url` part with `url` and `detail`), the answer length
(`max_completion_tokens`, or the older `max_tokens`), `stream`, and two fields of this
endpoint: `visual_tokens` (the m to answer at, 1..M) and `task` (a task of the registry
that generates text; default `vqa` with text, `caption` without). System messages are
read past; earlier turns are refused (the model answers one image and one question).
Decoding is greedy: `temperature` must be absent or 0, `n` absent or 1. Anything else is a
`BadRequest` naming the field, which the endpoint sends as a 400 in OpenAI's error format.
`completion`, `Stream` (with `Pieces`, the text of tokens as they come) and `error`
build what goes back. Pure Python.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from mqt.tasks import TASKS

DETAILS = ("low", "high", "auto")


class BadRequest(ValueError):
    """A request the endpoint refuses (400); `param` names the field."""

    def __init__(self, param: str | None, message: str, status: int = 400):
        super().__init__(f"{param}: {message}" if param else message)
        self.param, self.message, self.status = param, message, status


@dataclass(frozen=True)
class ChatRequest:
    question: str
    image_url: str
    image_param: str  # where the image is in the request, for errors about it
    detail: str
    visual_tokens: int | None
    max_new_tokens: int | None
    task: str
    stream: bool
    include_usage: bool


def parse(body, max_new_tokens: int, num_queries: int) -> ChatRequest:
    """The request in `body` (decoded JSON); `max_new_tokens`: the most the endpoint allows,
    `num_queries`: M."""
    if not isinstance(body, dict):
        raise BadRequest(None, "the body must be a JSON object")
    text, image, where, detail = _user_turn(body.get("messages"))
    task = body.get("task", "vqa" if text else "caption")
    if task not in TASKS or TASKS[task].scoring != "exact":
        served = sorted(t for t, x in TASKS.items() if x.scoring == "exact")
        raise BadRequest("task", f"{task!r} is not a task this endpoint answers ({served})")
    _greedy(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream", "must be true or false")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("stream_options", "must be an object")
    return ChatRequest(text, image, where, detail,
                       _int(body, "visual_tokens", 1, num_queries),
                       _length(body, max_new_tokens), task, stream,
                       bool(options.get("include_usage", False)))


def _user_turn(messages) -> tuple[str, str, str, str]:
    """(text, image URL, where the image is, detail) of the single user turn."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "give a list with one user message")
    users = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"]
    others = [i for i, m in enumerate(messages)
              if not isinstance(m, dict) or m.get("role") not in ("user", "system")]
    if others or len(users) != 1:
        i = others[0] if others else (users[1] if users else 0)
        raise BadRequest(f"messages[{i}]", "one user message (and system messages) is "
                         "served: the model answers one image and one question, no history")
    i = users[0]
    content = messages[i].get("content")
    if isinstance(content, str):
        raise BadRequest(f"messages[{i}].content", "needs an image_url part beside the text")
    if not isinstance(content, list):
        raise BadRequest(f"messages[{i}].content", "must be a list of text and image_url parts")
    texts, images = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"].strip())
        elif kind == "image_url":
            images.append((j, part.get("image_url")))
        else:
            raise BadRequest(f"messages[{i}].content[{j}]", "a part is {type: text, text} or "
                             "{type: image_url, image_url: {url, detail}}")
    if len(images) != 1:
        raise BadRequest(f"messages[{i}].content", f"one image_url part is needed, got "
                         f"{len(images)}")
    j, image = images[0]
    where = f"messages[{i}].content[{j}].image_url"
    if isinstance(image, str):
        image = {"url": image}
    if not isinstance(image, dict) or not isinstance(image.get("url"), str):
        raise BadRequest(where, "must be {url, detail}")
    detail = image.get("detail", "auto")
    if detail not in DETAILS:
        raise BadRequest(f"{where}.detail", f"must be one of {DETAILS}, got {detail!r}")
    return " ".join(t for t in texts if t), image["url"], where, detail


def _greedy(body: dict) -> None:
    temperature = body.get("temperature")
    if temperature is not None and temperature != 0:
        raise BadRequest("temperature", "answers are greedy: give 0 or leave it out")
    if body.get("n", 1) != 1:
        raise BadRequest("n", "one answer per request")


def _int(body: dict, name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(name, f"must be an integer in {low}..{high}, got {value!r}")
    return value


def _length(body: dict, most: int) -> int | None:
    """The answer length asked for: max_completion_tokens, else max_tokens."""
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            return _int(body, name, 1, most)
    return None


# ----------------------------------------------------------------------------- responses


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(row: dict) -> dict:
    """OpenAI's usage, and what the answer cost here: the visual tokens the LM read (part of
    prompt_tokens) and the cost model's FLOPs."""
    prompt = row["prompt_tokens"] + row["visual_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": row["new_tokens"],
            "total_tokens": prompt + row["new_tokens"], "visual_tokens": row["visual_tokens"],
            "flops": row["flops"]}


def finish_reason(row: dict, max_new_tokens: int) -> str:
    return "length" if row["new_tokens"] >= max_new_tokens else "stop"


def completion(cid: str, model: str, row: dict, max_new_tokens: int) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": row["prediction"]},
                         "logprobs": None,
                         "finish_reason": finish_reason(row, max_new_tokens)}],
            "usage": usage(row)}


class Stream:
    """The events of a streamed answer (OpenAI's `chat.completion.chunk`s as server-sent
    events): `role()` first, `content(text)` per piece of the answer, then `end(...)`."""

    def __init__(self, cid: str, model: str):
        self.cid, self.model, self.created = cid, model, int(time.time())

    def _event(self, choices: list, **extra) -> str:
        chunk = {"id": self.cid, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "choices": choices, **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    def _delta(self, delta: dict, finish: str | None = None) -> str:
        return self._event([{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}])

    def role(self) -> str:
        return self._delta({"role": "assistant", "content": ""})

    def content(self, text: str) -> str:
        return self._delta({"content": text})

    def end(self, row: dict, max_new_tokens: int, include_usage: bool) -> list[str]:
        """The finish reason (and with `include_usage` a last chunk with the usage), then
        `data: [DONE]`."""
        out = [self._delta({}, finish_reason(row, max_new_tokens))]
        if include_usage:
            out.append(self._event([], usage=usage(row)))
        return [*out, "data: [DONE]\n\n"]

    def failed(self, message: str) -> list[str]:
        """An error after the stream began (its status was 200): OpenAI's error object as an
        event, then `data: [DONE]`."""
        return [f"data: {json.dumps(error(message, 'server_error'))}\n\n", "data: [DONE]\n\n"]


class Pieces:
    """An answer's text as its tokens arrive: `add(token)` returns the new settled text (""
    while a piece may still change: trailing spaces, a character split across tokens),
    ending at the first stop token; `rest(final)` what the final answer adds to what was
    sent. The pieces join to the answer `mqt annotate` writes (decoded, stripped)."""

    def __init__(self, tokenizer, stops: set[int]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.sent, self.stopped = "", False

    def add(self, token: int) -> str:
        if self.stopped or token in self.stops:
            self.stopped = True
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).strip()
        settled = text.rstrip("\ufffd").rstrip()
        if len(settled) <= len(self.sent) or not settled.startswith(self.sent):
            return ""
        piece, self.sent = settled[len(self.sent):], settled
        return piece

    def rest(self, final: str) -> str:
        return final[len(self.sent):] if final.startswith(self.sent) else ""


def error(e: BadRequest | str, kind: str = "invalid_request_error") -> dict:
    """OpenAI's error body."""
    if isinstance(e, BadRequest):
        return {"error": {"message": str(e), "type": kind, "param": e.param, "code": None}}
    return {"error": {"message": e, "type": kind, "param": None, "code": None}}
