"""Hostile input: every regular expression and per-document stage in codelm/data stays linear on adversarial lines
(long digit runs, bracket runs, quote runs, whitespace runs), and a document that still runs too long is rejected by
name instead of stalling the run.

The inputs are sized so that the catastrophic backtracking once in the literal-line rule (2 s at 24 digits, x4 per
two more) would take days, and a quadratic scan minutes; each call runs under a generous time budget that turns such
a stall into a test failure instead of a hung suite."""

import pytest

from codelm.data.budget import DocumentTimeout, time_budget
from codelm.data.decontaminate import code_ngram_hashes, normalize_code, text_ngram_hashes
from codelm.data.dedup import exact_key, shingle_hashes
from codelm.data.educational import heuristic_edu_score
from codelm.data.filters import LITERAL_LINE, QualityConfig, quality_issue

N = 40           # digits in a run: exponential backtracking makes this ~4^8 times the 2 s of 24 digits
BIG = 50_000     # characters in a run: a quadratic scan makes this seconds at least

ADVERSARIAL_LINES = {
    "digits then letter": "1" * N + "a",
    "digits then dot": "1" * N + ".",
    "long digit run": "9" * BIG + "x",
    "numbers and commas": "1, " * (BIG // 3) + "x",
    "short strings": "'a', " * (BIG // 5) + "x",
    "hex run": "0x" + "f" * BIG + "g",
    "open brackets": "(" * BIG,
    "open then close": "[" * (BIG // 2) + "]" * (BIG // 2) + "x",
    "single quotes": "'" * BIG,
    "double quotes": '"' * BIG,
    "triple quotes unterminated": '"""' + "a " * (BIG // 2),
    "backslashes": "\\" * BIG,
    "spaces then letter": " " * BIG + "x",
    "tabs and spaces": " \t" * (BIG // 2) + "#",
    "comment markers": "# " * (BIG // 2) + "generated",
    "base64 almost": ("A" * 255 + "!") * (BIG // 256),
}


def _documents():
    for name, line in ADVERSARIAL_LINES.items():
        yield name, line  # the line alone
        yield name + " (in a file)", "import os\n\n" + (line + "\n") * 3 + "def f():\n    return 1\n"


@pytest.mark.parametrize("name,text", list(_documents()), ids=[n for n, _ in _documents()])
def test_every_stage_is_linear_on_adversarial_lines(name, text):
    with time_budget(20.0):
        for line in text.splitlines():
            LITERAL_LINE.match(line)
        quality_issue(text, QualityConfig(), "x.py")
        heuristic_edu_score(text)
        exact_key(text)
        shingle_hashes(text)
        normalize_code(text)
        code_ngram_hashes(text, 13)
        text_ngram_hashes(text, 13)


@pytest.mark.parametrize("line,literal", [
    ("1" * 60 + "a", False),
    ("1, 2, 3,  # the first three", True),
    ("    0x1F, 0x20, -3.5, 'ab', \"cd\", None,", True),
    ("(1, 2): [3, 4],", True),
    ("x = 1", False),
    ("None1", False),
    ("1.5.3", False),
])
def test_literal_line_rule_still_tells_tables_from_code(line, literal):
    assert bool(LITERAL_LINE.match(line)) is literal


def test_a_numeric_table_with_long_numbers_is_still_data_like():
    rows = "".join(f"    {'7' * 45}{i}, {'3' * 41}, # row\n" for i in range(40))
    assert quality_issue("TABLE = [\n" + rows + "]\n", QualityConfig()) == "data-like (literal table)"


def _burn_cpu_forever():
    while True:
        sum(range(1000))


def test_time_budget_interrupts_and_is_lifted_after():
    import time
    with pytest.raises(DocumentTimeout):
        with time_budget(0.05):
            _burn_cpu_forever()
    with time_budget(0.05):
        pass
    t0 = time.process_time()
    while time.process_time() - t0 < 0.1:  # the timer was cleared: nothing fires here
        pass


def test_time_budget_counts_cpu_time_not_waiting():
    """A starved or waiting document (a busy machine) does not spend its budget: the same command keeps the same
    documents whatever the load."""
    import time
    with time_budget(0.05):
        time.sleep(0.3)


class _Stalls:
    name = "stalls"

    def analyze(self, doc):
        if "stall" in doc.id:
            _burn_cpu_forever()
        return None

    def decide(self, doc, result):
        return None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_document_past_its_budget_is_rejected_by_name(workers):
    from codelm.data import prepare as p
    from codelm.data.sources import Document
    docs = [Document(f"ok{i}.py", "x = 1\n") for i in range(5)] + [Document("stall.py", "x = 2\n")]
    stats = p.StageStats("stalls")
    p._WORKER_STAGES = [_Stalls()]
    pool = p._make_pool(workers)
    try:
        kept = list(p.run_stage(_Stalls(), docs, stats, pool, 0, doc_seconds=0.2))
    finally:
        if pool is not None:
            pool.terminate()
        p._WORKER_STAGES = []
    assert [d.id for d in kept] == [f"ok{i}.py" for i in range(5)]
    assert stats.examples == {"time budget exceeded (stalls)": ["stall.py"]}


@pytest.mark.parametrize("line,literal", [("    };", False), ("1; 2;", True), ("'a';", True), (";", False)])
def test_semicolons_count_only_after_a_literal(line, literal):
    assert bool(LITERAL_LINE.match(line)) is literal
