"""Tests of the task registry: prompts, answer normalisation, scoring rules and errors."""

import pytest

from mqt import tasks
from mqt.tasks import (
    TASKS,
    Task,
    UnknownTaskError,
    format_prompt,
    get_task,
    normalize_answer,
    register_task,
)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so tests that register tasks leave TASKS alone."""
    copy = dict(TASKS)
    monkeypatch.setattr(tasks, "TASKS", copy)
    return copy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Red", "red"),
        ("  The red circle. ", "red circle"),
        ("a red circle", "red circle"),
        ("An apple!", "apple"),
        ("Two", "2"),
        ("twelve", "12"),
        ("3", "3"),
        ("zero", "0"),
        ("none", "0"),
        ("Grey", "gray"),
        ("Yes.", "yes"),
        ("no", "no"),
        ("rectangle,", "rectangle"),
        ("", ""),
        ("There are TWO red shapes", "there are 2 red shapes"),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_builtin_tasks():
    assert set(TASKS) >= {"caption", "vqa", "mc"}
    assert get_task("mc").scoring == "loglik"
    assert get_task("vqa").scoring == get_task("caption").scoring == "exact"
    assert all(0 < t.max_new_tokens <= 32 for t in TASKS.values())
    assert all(len(t.prompt) < 60 for t in TASKS.values())  # the model is small


def test_format_prompt():
    assert "what color is the shape?" in format_prompt("vqa", "what color is the shape?")
    # multiple choice scores its options under the VQA prompt: they are not listed in it
    mc = format_prompt("mc", "what shape is it?", ("circle", "rectangle", "triangle"))
    assert mc == format_prompt("vqa", "what shape is it?") and "circle" not in mc
    listed = Task("pick", "{question} Choose one: {options}.", max_new_tokens=2,
                  scoring="loglik")
    assert listed.format("q?", ("red", "blue", "teal")) == "q? Choose one: red, blue or teal."
    assert format_prompt("caption") == format_prompt("caption", "ignored question")
    assert format_prompt(get_task("vqa"), "q?") == format_prompt("vqa", "q?")
    with pytest.raises(ValueError, match="needs >= 2 options"):
        format_prompt("mc", "what shape is it?")
    with pytest.raises(ValueError, match="needs >= 2 options"):
        format_prompt("mc", "what shape is it?", ("circle",))
    with pytest.raises(ValueError, match="needs >= 2 options"):  # an exact task listing them
        Task("list", "{question} {options}", max_new_tokens=2).format("q?")


def test_which_tasks_need_options():
    assert get_task("mc").needs_options and not get_task("vqa").needs_options
    assert Task("list", "{question} {options}", max_new_tokens=2).needs_options
    assert Task("cloze", "{question}", max_new_tokens=2, scoring="loglik").needs_options


def test_unknown_task_error_lists_known_tasks():
    with pytest.raises(UnknownTaskError) as err:
        get_task("ocr")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "unknown task 'ocr'; known tasks: caption, mc, vqa"


def test_register_task(registry):
    task = register_task(Task("count", "How many? {question}", max_new_tokens=2))
    assert get_task("count") is task and "count" in registry and "count" not in TASKS
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task("vqa", "{question}", max_new_tokens=1))
    replaced = register_task(Task("vqa", "Q: {question} A:", max_new_tokens=1), overwrite=True)
    assert get_task("vqa") is replaced


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt": "{question}", "scoring": "bleu"}, "scoring"),
        ({"prompt": "{question} {image}"}, "placeholders"),
    ],
)
def test_task_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Task("bad", max_new_tokens=4, **kwargs)


def test_is_correct():
    vqa, caption = get_task("vqa"), get_task("caption")
    assert vqa.is_correct("Two.", "2")
    assert vqa.is_correct("Answer: Teal", "teal")
    assert not vqa.is_correct("blue", "teal")
    assert caption.is_correct("A red circle.", "a red circle")
    assert not caption.is_correct("a red square", "a red circle")


def test_every_dataset_example_formats_under_its_task():
    from mqt.data import easyvqa_examples, mosaic_examples

    examples = easyvqa_examples("test", tasks=("vqa", "caption", "mc"), limit=5)
    examples += mosaic_examples("test", 5, tasks=("vqa", "mc"))
    for ex in examples:
        task = get_task(ex.task)
        prompt = format_prompt(task, ex.question, ex.options)
        assert ex.question in prompt
        assert task.needs_options == bool(ex.options) and ex.answer in (ex.options or [ex.answer])
        assert task.is_correct(ex.answer, ex.answer)
