"""The educational-value scorer (phi-1 style, transparent features) against a small hand-labelled set."""

import pytest

from codelm.data.educational import EduFilter, edu_features, heuristic_edu_score, load_scorer
from codelm.data.sources import Document
from codelm.errors import ConfigError

# Hand labels: 1 = "useful for a student learning basic coding concepts" (phi-1's annotation prompt), 0 = not.
LABELLED = [
    (1, '''def is_prime(n: int) -> bool:
    """Return True if n is a prime number.

    >>> is_prime(7)
    True
    >>> is_prime(8)
    False
    """
    if n < 2:
        return False
    for divisor in range(2, int(n ** 0.5) + 1):
        if n % divisor == 0:
            return False
    return True
'''),
    (1, '''from collections import deque


def bfs_order(graph: dict[str, list[str]], start: str) -> list[str]:
    """Visit the graph breadth-first from `start`, returning nodes in the order they are reached."""
    seen = {start}
    order = []
    queue = deque([start])
    while queue:
        node = queue.popleft()
        order.append(node)
        for neighbour in graph.get(node, []):
            if neighbour not in seen:  # each node is queued once
                seen.add(neighbour)
                queue.append(neighbour)
    return order


assert bfs_order({"a": ["b", "c"], "b": ["d"]}, "a") == ["a", "b", "c", "d"]
'''),
    (1, '''class Stack:
    """A last-in, first-out stack built on a Python list."""

    def __init__(self) -> None:
        self._items: list = []

    def push(self, item) -> None:
        """Put an item on top of the stack."""
        self._items.append(item)

    def pop(self):
        """Remove and return the top item; raises IndexError when empty."""
        if not self._items:
            raise IndexError("pop from an empty stack")
        return self._items.pop()


def test_stack_is_lifo():
    stack = Stack()
    stack.push(1)
    stack.push(2)
    assert stack.pop() == 2
'''),
    (1, '''def binary_search(items: list[int], target: int) -> int:
    """Index of target in the sorted list items, or -1 when it is absent."""
    low, high = 0, len(items) - 1
    while low <= high:
        middle = (low + high) // 2
        if items[middle] == target:
            return middle
        if items[middle] < target:
            low = middle + 1  # the target is in the upper half
        else:
            high = middle - 1
    return -1
'''),
    (1, '''import math


def circle_area(radius: float) -> float:
    """Area of a circle with the given radius."""
    if radius < 0:
        raise ValueError("radius must be non-negative")
    return math.pi * radius ** 2


def hypotenuse(a: float, b: float) -> float:
    """Length of the hypotenuse of a right triangle with legs a and b."""
    return math.sqrt(a * a + b * b)
'''),
    (1, '''def word_frequencies(text):
    """Count how often each word occurs in text, ignoring case.

    >>> word_frequencies("the cat and the hat")["the"]
    2
    """
    counts = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return counts
'''),
    (0, '''from ._impl import *
from ._impl import __all__
'''),
    (0, '''SETTINGS = {
    "host": "0.0.0.0",
    "port": 8080,
    "debug": False,
    "workers": 4,
}
'''),
    (0, '''import numpy as np
import torch
import foo_internal_lib as fil
def f(a,b,c):
  x=fil.q(a);y=np.zeros(b)
  for i in range(c):
    y[i]=x[i]*2 if x[i]>0 else fil.z(x,i)
  return torch.tensor(y)
'''),
    (0, '''import wx
class Frm(wx.Frame):
    def __init__(s, p):
        wx.Frame.__init__(s, p, -1, "t", size=(300, 200))
        s.b = wx.Button(s, -1, "ok")
        s.b.Bind(wx.EVT_BUTTON, s.h)
    def h(s, e):
        s.Close()
'''),
    (0, '''x = 1
y = 2
z = x + y
print(z)
'''),
    (0, '''import requests, boto3, yaml
def main():
    c = yaml.safe_load(open("c.yml"))
    r = requests.get(c["u"])
    boto3.client("s3").put_object(Bucket=c["b"], Key="k", Body=r.content)
main()
'''),
]

THRESHOLD = 0.5  # a strict, phi-1-like cut for this set; the pipeline's default (0.2) only drops near-empty files


def agreement(threshold: float) -> float:
    return sum((heuristic_edu_score(code) >= threshold) == bool(label) for label, code in LABELLED) / len(LABELLED)


def test_scorer_agrees_with_hand_labels():
    score = agreement(THRESHOLD)
    print(f"heuristic edu scorer agreement with {len(LABELLED)} hand labels at {THRESHOLD}: {score:.0%}")
    assert score >= 0.9


def test_every_labelled_good_file_outranks_every_bad_one_on_average():
    good = [heuristic_edu_score(c) for lbl, c in LABELLED if lbl]
    bad = [heuristic_edu_score(c) for lbl, c in LABELLED if not lbl]
    assert min(good) > sum(bad) / len(bad)
    assert sum(good) / len(good) > max(bad)


def test_scores_are_in_unit_interval_and_invalid_python_scores_zero():
    assert all(0.0 <= heuristic_edu_score(code) <= 1.0 for _, code in LABELLED)
    assert heuristic_edu_score("def broken(:\n    pass") == 0.0
    assert edu_features("def broken(:") is None


def test_features_respond_to_what_they_describe():
    bare = "def f(a, b):\n    if a:\n        return b\n    return a\n"
    documented = ('def f(a: int, b: int) -> int:\n    """Pick b when a is set."""\n'
                  '    if a:\n        return b\n    return a\n')
    fb, fd = edu_features(bare), edu_features(documented)
    assert fd["documented"] > fb["documented"]
    assert fd["typed"] == 1.0 and fb["typed"] == 0.0
    assert edu_features("import numpy\n")["self_contained"] == 0.0
    assert edu_features("import os\n")["self_contained"] == 1.0


def test_filter_drops_below_threshold_and_records_scores():
    stage = EduFilter(THRESHOLD)
    kept = [stage.keep(Document(f"{i}.py", code)) is None for i, (_, code) in enumerate(LABELLED)]
    assert kept == [bool(lbl) for lbl, _ in LABELLED]
    assert len(stage.scores) == len(LABELLED)


def test_non_python_files_pass_unscored():
    stage = EduFilter(0.9)
    assert stage.keep(Document("main.go", "package main\n")) is None
    assert stage.scores == []


def test_a_trained_classifier_plugs_in_by_import_path():
    stage = EduFilter(10, scorer="builtins:len")  # any callable text -> number
    assert stage.keep(Document("a.py", "x = 1")) == "low educational value"
    assert stage.keep(Document("b.py", "x = 1 + 2 + 3 + 4")) is None
    with pytest.raises(ConfigError, match="no_such_module"):
        load_scorer("no_such_module:score")
