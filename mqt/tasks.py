"""The task registry: how each task (caption, vqa, mc) is prompted, decoded and scored.

A `Task` holds a short prompt template (the model is small), a generation length, an answer
normaliser and a scoring rule: "exact" compares the normalised generated text with the
normalised reference; "loglik" (multiple choice) has the engine score each option's
log-likelihood as the whole answer to the prompt and take the best, so no free text is
parsed. Multiple choice asks the question as VQA does and does not list the options: the
model was trained on that prompt only, and listing them made it pick "teal", "rectangle"
and "yes" whatever the image (docs/bench/mc_scoring.md). The batch
pipeline, evaluation and serving all read tasks from `TASKS` through `get_task`; users add
their own with `register_task`. Plain Python, no Ray.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

SCORINGS = ("exact", "loglik")
ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = {
    w: str(n)
    for n, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
# Spelling variants mapped to the form the datasets use (easy-vqa says "gray").
SYNONYMS = {"grey": "gray", "none": "0", "yeah": "yes", "yep": "yes", "nope": "no"}
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize_answer(text: str) -> str:
    """Canonical answer text: lowercase, no punctuation or articles, numbers as digits.

    "The Red circle." -> "red circle"; "Two" -> "2"; "grey" -> "gray".
    """
    words = str(text).lower().translate(_PUNCT).split()
    words = [NUMBER_WORDS.get(w, SYNONYMS.get(w, w)) for w in words if w not in ARTICLES]
    return " ".join(words)


def format_options(options: Sequence[str]) -> str:
    """Options as one short line, "red, blue, green or teal" (for a prompt that lists them)."""
    return f"{', '.join(options[:-1])} or {options[-1]}"


@dataclass(frozen=True)
class Task:
    """One task: its prompt template, how long answers are and how they are scored.

    `prompt` may use `{question}` and `{options}`. A "loglik" task or one whose prompt
    lists `{options}` needs >= 2 options per question (`needs_options`).
    """

    name: str
    prompt: str
    max_new_tokens: int
    scoring: str = "exact"  # "exact" or "loglik"
    normalize: Callable[[str], str] = field(default=normalize_answer, compare=False)
    description: str = ""

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"task {self.name!r}: scoring must be one of {SCORINGS}")
        unknown = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f} - {
            "question", "options"}
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown placeholders {sorted(unknown)}")

    @property
    def needs_options(self) -> bool:
        """Whether each question needs >= 2 options: they are scored or the prompt lists them."""
        return self.scoring == "loglik" or "{options}" in self.prompt

    def format(self, question: str = "", options: Sequence[str] = ()) -> str:
        """The prompt for one example."""
        if self.needs_options and len(options) < 2:
            raise ValueError(f"task {self.name!r} needs >= 2 options, got {list(options)}")
        opts = format_options(options) if "{options}" in self.prompt else ""
        return self.prompt.format(question=question.strip(), options=opts)

    def is_correct(self, prediction: str, answer: str) -> bool:
        """Exact match after normalisation (for "loglik" the prediction is the chosen option)."""
        return self.normalize(prediction) == self.normalize(answer)


class UnknownTaskError(KeyError):
    """A task name not in the registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


TASKS: dict[str, Task] = {}


def register_task(task: Task, *, overwrite: bool = False) -> Task:
    """Add a task to `TASKS`; replacing an existing name needs `overwrite=True`."""
    if task.name in TASKS and not overwrite:
        raise ValueError(f"task {task.name!r} is already registered (pass overwrite=True)")
    TASKS[task.name] = task
    return task


def get_task(name: str | Task) -> Task:
    """The registered task of that name (a `Task` is returned as is)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        known = ", ".join(sorted(TASKS))
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {known}")
    return TASKS[name]


def format_prompt(task: str | Task, question: str = "", options: Sequence[str] = ()) -> str:
    """The prompt for `question` (and `options`) under a task given by name or object."""
    return get_task(task).format(question, options)


def _strip_answer_prefix(text: str) -> str:
    """Generated answers often start "Answer: ..."; drop that before normalising."""
    return normalize_answer(re.sub(r"^\s*answer\s*:", "", str(text), flags=re.IGNORECASE))


register_task(Task("caption", "Describe the image in a few words.", max_new_tokens=16,
                   normalize=_strip_answer_prefix,
                   description="a short caption, e.g. 'a red circle'"))
# The VQA prompt the default model was trained on; multiple choice scores its options under
# the same prompt (the module docstring).
VQA_PROMPT = "{question} Answer in one word."
register_task(Task("vqa", VQA_PROMPT, max_new_tokens=8,
                   normalize=_strip_answer_prefix,
                   description="a short free-form answer to a question about the image"))
register_task(Task("mc", VQA_PROMPT, max_new_tokens=8,
                   scoring="loglik", normalize=_strip_answer_prefix,
                   description="pick one of the given options (scored by log-likelihood)"))
