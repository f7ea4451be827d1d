"""No regular expression that can hang: every pattern in codelm/ (the data room has its own audit), evals/, web/ and
sandbox/ is listed here with the way the code applies it and adversarial inputs (long digit runs, brackets, quotes,
whitespace, word characters).

The proof is structural, not a stopwatch: (1) no unbounded quantifier inside another (the exponential kind), and
(2) no unbounded quantifier in a searched pattern that can run past the place where the next attempt would start
without being anchored (the quadratic kind: findall/sub/search retry at every position or line). Then each pattern
runs on ~1 MB adversarial inputs, where a quadratic pattern takes ~10^12 steps (hours) and a linear one milliseconds,
so a regression shows as a test that never finishes, not as a flaky threshold.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOMS = ("codelm", "evals", "web", "sandbox")
N = 1_000_000

ADVERSARIAL = {
    "digits": "1" * N,
    "newlines": "\n" * N,
    "spaces": " " * N,
    "blank lines": " \t\n" * (N // 3),
    "word": "a" * N,
    "dotted words": "a." * (N // 2),
    "braces": "{1" * (N // 2),
    "brace digits": "{" + "1" * N + ",",
    "quotes": 'File "' * (N // 6),
    "frames": '  File "x' * (N // 9),
    "brackets": "<0x" * (N // 3),
    "layers": "layers." + "1" * N,
    "layer names": "model.layers." + "1." * (N // 2),
    "errors": "Error" * (N // 5),
    "unclosed comments": "/* " * (N // 3),
    "comment ends": "*/" * (N // 2),
    "package names": "strings" * (N // 7),
    "import lines": " " * (N // 2) + "a" * (N // 2),
}

# pattern -> (how the code applies it, flags); checked against the source below, so a new pattern needs an entry
AUDITED = {
    r"<0x[0-9A-Fa-f]{2}>": ("fullmatch", 0),                        # hf_tokenizer: byte-fallback tokens
    r"layers\.(\d+)\.(.+?)(\.weight|\.bias)?": ("fullmatch", 0),    # hf: codelm -> HF weight names
    r"model\.layers\.(\d+)\.(.+)": ("fullmatch", 0),                # hf: HF -> codelm weight names
    r"model\.layers\.(\d+)\.(.+)\.(weight|bias)": ("fullmatch", 0),  # gguf: HF -> GGUF tensor names
    r"(\{\d+(?:,\d*)?\})\+": ("sub", 0),                            # hf: tiktoken pattern -> Oniguruma
    r"[^\w.-]+": ("sub", 0),                                        # evals/cli: model name -> directory name
    r"^\s": ("match", 0),                                           # evals/execution: traceback frame lines
    r"^[A-Za-z_][\w.]*Error(: |$)": ("match", 0),                   # evals/execution: the exception line
    r"[\w.]+": ("fullmatch", 0),                                    # evals/execution: an exception type name
    r'^[ \t]*File "[^"\n]*", line (\d+)': ("findall", re.MULTILINE),  # evals/execution: a SyntaxError's line
    r"(?:mbpp/)?(\d+)": ("fullmatch", re.IGNORECASE),               # evals/mbpp: task ids
    r"Error|Exception|panicked|Assertion|FAIL": ("search", 0),       # evals/execution: other languages' error line
    r"//[^\n]*|/\*.*?(?:\*/|\Z)": ("sub", re.S),                    # evals/humaneval_x: Go comments out
    r'^\s*(?:(\w+)\s+)?"([\w./-]+)"\s*$': ("match", 0),            # evals/humaneval_x: one Go import line
    # built per name: the source text of the f-string -> (an instance, how it is applied, flags)
    "f'(?<![\\\\w.]){re.escape(name)}\\\\.'": ("search", 0),      # evals/humaneval_x: a package used in the code
}
INSTANCES = {"f'(?<![\\\\w.]){re.escape(name)}\\\\.'": r"(?<![\w.])strings\."}

RE_FUNCTIONS = {"compile", "match", "fullmatch", "search", "sub", "subn", "split", "findall", "finditer"}


def patterns_in_source() -> dict[str, str]:
    """Every string literal given to a `re` function in the audited rooms -> the file it is in."""
    found = {}
    for room in ROOMS:
        for path in (ROOT / room).rglob("*.py"):
            if path.is_relative_to(ROOT / "codelm" / "data"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id in ("re", "regex")
                        and node.func.attr in RE_FUNCTIONS and node.args):
                    arg = node.args[0]
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found[arg.value] = str(path.relative_to(ROOT))
                    elif isinstance(arg, ast.JoinedStr):  # a pattern built at run time: audited by its source
                        found[ast.unparse(arg)] = str(path.relative_to(ROOT))
    return found


def test_every_pattern_in_the_rooms_is_audited():
    found = patterns_in_source()
    assert set(found) == set(AUDITED), {p: found.get(p, "gone") for p in set(found) ^ set(AUDITED)}


# --- structure --------------------------------------------------------------------------------------------------------
def _parse(pattern, flags):
    import re._parser as parser  # Python 3.11+: the parser the re module itself uses
    return parser.parse(pattern, flags), parser


def _unbounded_repeats(tree, parser, inside=False):
    """(node, its body, whether it is inside another unbounded repeat) for every unbounded repeat."""
    from re._constants import MAXREPEAT
    for op, av in tree:
        if op in (parser.MAX_REPEAT, parser.MIN_REPEAT, parser.POSSESSIVE_REPEAT):
            lo, hi, body = av
            unbounded = hi == MAXREPEAT
            if unbounded:
                yield body, inside
            yield from _unbounded_repeats(body, parser, inside or unbounded)
        elif op == parser.SUBPATTERN:
            yield from _unbounded_repeats(av[-1], parser, inside)
        elif op == parser.BRANCH:
            for alt in av[1]:
                yield from _unbounded_repeats(alt, parser, inside)
        elif op == parser.ATOMIC_GROUP:
            yield from _unbounded_repeats(av, parser, inside)


def _can_match_newline(body, parser) -> bool:
    return bool(re.fullmatch(_unparse_class(body, parser), "\n"))


def _unparse_class(body, parser) -> str:
    """A one-character body of a repeat, back to a pattern (enough for the classes these patterns use)."""
    (op, av), = list(body)
    if op == parser.IN:
        items = []
        for iop, iav in av:
            if iop == parser.NEGATE:
                items.append("^")
            elif iop == parser.LITERAL:
                items.append(re.escape(chr(iav)))
            elif iop == parser.RANGE:
                items.append(f"{re.escape(chr(iav[0]))}-{re.escape(chr(iav[1]))}")
            elif iop == parser.CATEGORY:
                items.append({parser.CATEGORY_DIGIT: r"\d", parser.CATEGORY_SPACE: r"\s",
                              parser.CATEGORY_WORD: r"\w"}[iav])
        return "[" + "".join(items) + "]"
    if op == parser.ANY:
        return "."
    if op == parser.LITERAL:
        return re.escape(chr(av))
    raise AssertionError(f"unexpected repeat body {op}")


@pytest.mark.parametrize("pattern", list(AUDITED))
def test_no_quantifier_nested_in_another(pattern):
    tree, parser = _parse(INSTANCES.get(pattern, pattern), AUDITED[pattern][1])
    nested = [body for body, inside in _unbounded_repeats(tree, parser) if inside]
    assert not nested, f"{pattern!r}: an unbounded repeat inside another can backtrack exponentially"


@pytest.mark.parametrize("pattern", [p for p, (mode, flags) in AUDITED.items() if flags & re.MULTILINE])
def test_a_line_anchored_search_never_crosses_a_line(pattern):
    """findall with ^ under MULTILINE retries at every line start; a repeat that may cross newlines makes each
    retry scan the rest of the text (n^2 on n blank lines)."""
    tree, parser = _parse(INSTANCES.get(pattern, pattern), AUDITED[pattern][1])
    crossing = [body for body, _ in _unbounded_repeats(tree, parser) if _can_match_newline(body, parser)]
    assert not crossing, f"{pattern!r}: a repeat that matches a newline"


def test_the_structure_checks_catch_the_patterns_they_are_for():
    tree, parser = _parse(r"(a+)+$", 0)
    assert any(inside for _, inside in _unbounded_repeats(tree, parser))
    tree, parser = _parse(r'^\s*File "[^"]*", line (\d+)', re.MULTILINE)  # the pattern this audit replaced
    assert any(_can_match_newline(body, parser) for body, _ in _unbounded_repeats(tree, parser))


def test_go_comments_are_stripped_in_linear_time_even_when_unclosed():
    r"""The second case the audit found: `/\*.*?\*/` (DOTALL) rescanned the rest of a completion from every unclosed
    `/*` (20,000 of them: 21 s). An unclosed comment now runs to the end, as Go reads it."""
    from evals.humaneval_x import _GO_COMMENT
    assert _GO_COMMENT.sub("", "a /* x */ b // c\nd /* open\nstill") == "a  b \nd "
    assert _GO_COMMENT.sub("", "x" + "/* " * (N // 3)) == "x"


# --- adversarial inputs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", list(AUDITED))
def test_each_pattern_on_adversarial_input(pattern):
    mode, flags = AUDITED[pattern]
    compiled = re.compile(INSTANCES.get(pattern, pattern), flags)
    for name, text in ADVERSARIAL.items():
        if mode == "sub":
            compiled.sub("_", text)
        else:
            getattr(compiled, mode)(text)


def test_a_syntax_error_under_a_flood_of_blank_lines_is_read_in_linear_time():
    """The case the audit found: a program printing many blank lines to stderr before a SyntaxError made scoring
    quadratic (20,000 lines: ~1 s; a 1 MB stderr: ~an hour)."""
    from evals.execution import exception_message
    stderr = "\n" * N + '  File "<string>", line 7\n    def f(\n         ^\nSyntaxError: bad\n'
    assert exception_message("SyntaxError: bad", stderr) == "bad (<string>, line 7)"
    assert exception_message("SyntaxError: bad", ' File "x' * (N // 8)) == "bad"
