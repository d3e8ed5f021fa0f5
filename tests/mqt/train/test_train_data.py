"""The training data: the yes/no questions kept, balanced over (negated, answer) classes."""

from collections import Counter

from mqt.data.easyvqa import Example
from mqt.train.config import DataArgs
from mqt.train.data import yesno_class, yesno_kept


def _yesno(i: int, negated: bool, answer: str):
    q = "is there not a circle?" if negated else "is there a circle?"
    return Example(f"q{i}", None, "vqa", q, answer, meta={"kind": "yesno"})


def test_yesno_balance_evens_the_negated_and_answer_classes():
    # skewed as easy-vqa is: negated questions mostly "yes", plain ones mostly "no"
    sizes = {(True, "yes"): 800, (True, "no"): 200, (False, "no"): 800, (False, "yes"): 200}
    classes = [c for c, n in sizes.items() for _ in range(n)]
    rows = [_yesno(i, neg, ans) for i, (neg, ans) in enumerate(classes)]
    other = Example("c", None, "caption", "", "a red circle", meta={"kind": "caption"})
    plain = yesno_kept([*rows, other], DataArgs(yesno_keep=0.4))
    even = yesno_kept([*rows, other], DataArgs(yesno_keep=0.4, yesno_balance=True))
    assert other in plain and other in even  # only yes/no rows are sampled
    got = Counter(yesno_class(ex) for ex in even if ex is not other)
    assert all(abs(n - 200) <= 40 for n in got.values()), got  # 0.4 x 2000 / 4 each
    assert got[(True, "no")] == 200  # a small class is kept whole
    skew = Counter(yesno_class(ex) for ex in plain if ex is not other)
    assert skew[(True, "yes")] > 2 * skew[(True, "no")]  # the plain share keeps the skew
    assert even == yesno_kept([*rows, other], DataArgs(yesno_keep=0.4, yesno_balance=True))
