"""pipeline/serve/openai.py: a Chat Completions body becomes one row to answer, or a 400
naming the field; the responses and stream chunks are OpenAI's shapes."""

import json

import pytest

from pipeline.serve.openai import BadRequest, Pieces, Stream, completion, error, parse

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def body(*parts, **more) -> dict:
    return {"model": "x", "messages": [{"role": "user", "content": list(parts)}], **more}


def test_text_and_image_make_a_vqa_row_and_no_text_a_caption():
    req = parse(body({"type": "text", "text": " What shape? "}, IMAGE, max_tokens=5), 64, 16)
    assert (req.question, req.task, req.detail, req.max_new_tokens) == ("What shape?", "vqa",
                                                                         "auto", 5)
    assert req.image_url == "data:image/png;base64,AAAA" and not req.stream
    assert req.image_param == "messages[0].content[1].image_url"
    cap = parse(body(IMAGE), 64, 16)
    assert (cap.task, cap.question, cap.max_new_tokens, cap.visual_tokens) == ("caption", "",
                                                                               None, None)
    system = {"role": "system", "content": "be brief"}
    req = parse({"messages": [system, *body(IMAGE)["messages"]], "visual_tokens": 16,
                 "max_completion_tokens": 3, "max_tokens": 9, "temperature": 0}, 64, 16)
    assert (req.visual_tokens, req.max_new_tokens) == (16, 3)  # the newer name wins


@pytest.mark.parametrize("request_body, param", [
    ([], None),
    ({"messages": []}, "messages"),
    (body({"type": "text", "text": "hi"}), "messages[0].content"),  # no image
    (body(IMAGE, IMAGE), "messages[0].content"),
    ({"messages": [{"role": "user", "content": "just text"}]}, "messages[0].content"),
    (body(IMAGE, {"type": "audio"}), "messages[0].content[1]"),
    (body({"type": "image_url", "image_url": {"url": "x", "detail": "max"}}),
     "messages[0].content[0].image_url.detail"),
    ({"messages": [{"role": "assistant", "content": "hi"}, *body(IMAGE)["messages"]]},
     "messages[0]"),
    (body(IMAGE, visual_tokens=17), "visual_tokens"),
    (body(IMAGE, visual_tokens=0), "visual_tokens"),
    (body(IMAGE, visual_tokens="4"), "visual_tokens"),
    (body(IMAGE, max_tokens=65), "max_tokens"),
    (body(IMAGE, max_completion_tokens=0), "max_completion_tokens"),
    (body(IMAGE, temperature=0.7), "temperature"),
    (body(IMAGE, n=2), "n"),
    (body(IMAGE, stream="yes"), "stream"),
    (body(IMAGE, task="mc"), "task"),
    (body(IMAGE, task="nosuch"), "task"),
])
def test_bad_requests_name_the_field(request_body, param):
    with pytest.raises(BadRequest) as e:
        parse(request_body, 64, 16)
    assert e.value.param == param and e.value.status == 400
    assert error(e.value)["error"]["param"] == param


ROW = {"id": "chatcmpl-1", "prediction": "red circle", "prompt_tokens": 30, "visual_tokens": 4,
       "new_tokens": 3, "flops": 1234}


def test_a_completion_carries_the_answer_and_what_it_cost():
    c = completion("chatcmpl-1", "mqt-smol", ROW, max_new_tokens=8)
    assert c["choices"][0]["message"] == {"role": "assistant", "content": "red circle"}
    assert c["choices"][0]["finish_reason"] == "stop"
    assert c["usage"] == {"prompt_tokens": 34, "completion_tokens": 3, "total_tokens": 37,
                          "visual_tokens": 4, "flops": 1234}
    assert completion("c", "m", ROW, max_new_tokens=3)["choices"][0]["finish_reason"] == "length"


def chunks(cid, model, row, max_new_tokens, include_usage):
    s = Stream(cid, model)
    return [s.role(), s.content(row["prediction"]), *s.end(row, max_new_tokens, include_usage)]


def test_a_stream_is_role_text_finish_usage_then_done():
    events = chunks("chatcmpl-1", "mqt-smol", ROW, 8, include_usage=True)
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    assert events[-1] == "data: [DONE]\n\n"
    parsed = [json.loads(e[6:]) for e in events[:-1]]
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in parsed if p["choices"])
    assert text == "red circle" and parsed[2]["choices"][0]["finish_reason"] == "stop"
    assert parsed[3]["usage"]["visual_tokens"] == 4 and parsed[3]["choices"] == []
    assert len(chunks("c", "m", ROW, 8, include_usage=False)) == 4
    failed = Stream("c", "m").failed("model: boom")
    assert json.loads(failed[0][6:])["error"]["message"] == "model: boom"
    assert failed[-1] == "data: [DONE]\n\n"


class Words:
    """A tokenizer whose tokens are words and pieces of a two-token character."""

    pieces = {1: " red", 2: " circle", 3: " ", 4: "\xe2", 5: "\x9c\x93", 9: "<stop>"}

    def decode(self, ids, skip_special_tokens=True):
        raw = "".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == 9))
        return raw.encode("latin-1").decode("utf-8", errors="replace")


def test_pieces_send_settled_text_once_and_join_to_the_answer():
    p = Pieces(Words(), stops={9})
    sent = [p.add(t) for t in (1, 2, 3, 4, 5, 9, 1)]
    # a trailing space and half a character wait; nothing after the stop token
    assert sent == ["red", " circle", "", "", " \u2713", "", ""]
    assert "".join(sent) + p.rest("red circle \u2713") == "red circle \u2713"
    q = Pieces(Words(), stops={9})
    q.add(1)
    assert q.rest("red circle") == " circle"  # what the final answer adds
