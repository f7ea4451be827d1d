"""HumanEval-X (Zheng et al. 2023, "CodeGeeX"): HumanEval's 164 problems hand-translated to C++, Java, JavaScript, Go
and Rust, each with its own tests.

Data: `humaneval-x/humaneval_<language>.jsonl.gz`, packaged with codelm (codelm/benchdata; see evals/data.py), plus Go's vendored
test modules (`humaneval-x/go/go.mod`, `vendor.tar.gz`). Fields: task_id ("CPP/0", "Java/0", "JavaScript/0",
"Go/0", "Rust/0"), prompt, declaration, canonical_solution (the body and the function's closing brace), test; Go adds
import, test_setup. Apache-2.0.

Prompt: the problem's `prompt`, unchanged, for C++, Java, JavaScript and Go; for Rust, whose `prompt` is only the
comment, the comment followed by `declaration` (the crate imports and the signature).
Stop sequence: "\\n}" (a brace at column 0 closes the function, or Java's class), then the brace is put back:
post-processing cuts a generated continuation at the first "\\n}" and appends "\\n}\\n". Completions read from a sample
file are scored as given.
Program (as upstream's evaluator assembles it, with the nonce of the verdict contract after the tests):
  C++        the helper includes upstream adds (#include <stdlib.h>, <algorithm>, ... 9 in all) + prompt + completion
             + test, the test's `main` renamed so that a new `main` runs it and then writes the nonce; g++ -std=c++11,
             -lcrypto when the program includes OpenSSL (CPP/162, MD5).
  Java       prompt + completion + test (its `public class Main`), run through a class whose main calls Main.main and
             then writes the nonce.
  JavaScript a prelude that makes console.assert throw (in Node it only prints and the script exits 0, so every
             wrong completion would pass; upstream fails any program that prints) + prompt + completion + test + the
             nonce.
  Go         test_setup (package main, testing, testify's assert) + the imports the code uses (upstream's helper list
             and the prompt's own, each only if used: Go refuses unused imports) + prompt without its import block +
             completion + test + a TestMain that writes the nonce after m.Run() passes; built with `go test -c`
             against the vendored modules, offline.
  Rust       comment + declaration + completion + test + a last test (run last: one test thread, tests in name
             order) that writes the nonce; rustc --test with rand, regex and md5 from Debian's sources (rand 0.8
             where upstream pins 0.4). A task that cannot build that way is listed in UNAVAILABLE and scored
             as a failure with its reason, never dropped: Rust/50 (its test uses rand 0.4's API).
Time budget: 3 CPU seconds for the run step, 10 for Java (a JVM's start-up and JIT threads take about 0.5);
builds have their own limits (sandbox/toolchains.py).
"""

import gzip
import hashlib
import io
import re
import tarfile
from functools import partial
from pathlib import Path

from codelm.stops import cut_at_stop
from evals.benchmark import Benchmark
from evals.data import EvalInputError, find_local_file, find_or_download, read_jsonl
from evals.infilling import Infilling

LANGUAGES = ("cpp", "java", "js", "go", "rust")
TASK_PREFIX = {"cpp": "CPP", "java": "Java", "js": "JavaScript", "go": "Go", "rust": "Rust"}
UPSTREAM = "https://github.com/THUDM/CodeGeeX/raw/main/codegeex/benchmark/humaneval-x/"
CACHE_DIR = Path.home() / ".cache" / "codelm" / "humaneval-x"
STOP = ["\n}"]
CPU_S = {"cpp": 3.0, "java": 10.0, "js": 3.0, "go": 3.0, "rust": 3.0}
CPP_HELPERS = ["stdlib.h", "algorithm", "math.h", "stdio.h", "vector", "string", "climits", "cstring", "iostream"]
GO_HELPERS = ["math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5"]
GO_TEST_IMPORTS = ["github.com/stretchr/testify/assert"]
# task_id -> why it cannot run here with Debian's packages: scored as a failure with this reason, never dropped.
UNAVAILABLE = {"JavaScript/162": "needs the npm package js-md5, which Debian does not ship",
               "Rust/50": "its test calls rand 0.4's gen_range(low, high); Debian ships rand 0.8"}
JS_PRELUDE = ("Object.defineProperty(console, 'assert', {writable: false, configurable: false, value: "
              "function (ok, ...rest) { if (!ok) throw new Error(['Assertion failed', ...rest].join(' ')); }});\n")


class HumanEvalX(Benchmark):
    stop = STOP

    def __init__(self, problems, source, language: str, go_module: dict | None = None):
        super().__init__(problems, source)
        self.language = language
        self.name = f"humaneval-x/{language}"
        self.cpu_s = CPU_S[language]
        self.go_module = go_module

    def prompt(self, problem):
        if self.language == "rust":
            return problem["prompt"] + problem["declaration"]
        return problem["prompt"]

    def reference(self, problem):
        return problem["canonical_solution"]

    def postprocess(self, completion):
        cut, stopped = cut_at_stop(completion, self.stop)
        return cut + "\n}\n" if stopped else completion

    def unavailable(self, problem) -> str | None:
        return UNAVAILABLE.get(problem["task_id"])

    def program(self, problem, completion, nonce: str = "NONCE") -> str:
        """The program's source, nonce included (the runner gets runnable(), which builds it per run)."""
        return SOURCES[self.language](self, problem, completion, nonce)

    def runnable(self, problem, completion):
        """A function of the run's nonce to the sandbox Program that passes iff the completion is correct."""
        return partial(self.sandbox_program, problem, completion)

    def sandbox_program(self, problem, completion, nonce):
        from sandbox import toolchains

        source = self.program(problem, completion, nonce)
        options = {}
        if self.language == "cpp":
            options = dict(cpp_pch=True, link=["-lcrypto"] if "openssl/" in source else [])
        elif self.language == "java":
            options = dict(main_class="CodelmVerdict")
        elif self.language == "go":
            options = dict(go_module=self.go_module)
        return toolchains.program(self.language, source, **options)

    def extra_metrics(self, results):
        gone = {r["task_id"]: UNAVAILABLE[r["task_id"]] for r in results if r["task_id"] in UNAVAILABLE}
        return {"unavailable_tasks": gone} if gone else {}

    def protocol_extras(self):
        return {"language": self.language}


def _cpp(bench, problem, completion, nonce):
    prompt = problem["prompt"]
    helpers = "".join(f"#include<{h}>\n" for h in CPP_HELPERS if f"#include<{h}>" not in prompt)
    test = problem["test"]
    return (helpers + "\n" + prompt + completion + "\n#define main codelm_tests_main\n" + test + "\n#undef main\n"
            "#include <unistd.h>\n"
            "int main() {\n    codelm_tests_main();\n"
            f'    static const char nonce[] = "{nonce}\\n";\n'
            "    return write(1, nonce, sizeof nonce - 1) == (long) sizeof nonce - 1 ? 0 : 1;\n}\n")


def _java(bench, problem, completion, nonce):
    return (problem["prompt"] + completion + "\n" + problem["test"] + "\n\n"
            "class CodelmVerdict {\n"
            "    public static void main(String[] args) throws Throwable {\n"
            "        Main.main(args);\n"
            "        java.io.FileOutputStream out = new java.io.FileOutputStream(java.io.FileDescriptor.out);\n"
            f'        out.write("{nonce}\\n".getBytes());\n'
            "        out.flush();\n    }\n}\n")


def _js(bench, problem, completion, nonce):
    return (JS_PRELUDE + problem["prompt"] + completion + "\n" + problem["test"] + "\n"
            f"require('fs').writeSync(1, '{nonce}\\n');\n")


# An unclosed /* runs to the end (as in Go): with `.*?\*/` alone, each of n unclosed openers scanned the rest of the
# text, n^2 (20,000 "/* " took 21 s); now the first one ends the search
_GO_COMMENT = re.compile(r"//[^\n]*|/\*.*?(?:\*/|\Z)", re.S)
_GO_IMPORT_LINE = re.compile(r'^\s*(?:(\w+)\s+)?"([\w./-]+)"\s*$')


def _go(bench, problem, completion, nonce):
    prompt = problem["prompt"].replace(problem["import"], "") if problem["import"] else problem["prompt"]
    code = _GO_COMMENT.sub("", prompt + completion)  # "a list of strings." in a comment is no use of strings
    candidates = {path: None for path in GO_HELPERS}
    for line in problem["import"].splitlines():
        match = _GO_IMPORT_LINE.match(line)
        if match:
            candidates[match.group(2)] = match.group(1)
    setup = problem["test_setup"]
    imports = []
    for path, alias in candidates.items():
        name = alias or path.rsplit("/", 1)[-1]
        if f'"{path}"' not in setup and re.search(rf"(?<![\w.]){re.escape(name)}\.", code):
            imports.append(f'    {alias + " " if alias else ""}"{path}"\n')
    extra = "import (\n" + "".join(imports) + ")\n" if imports else ""
    return (setup + "\n" + extra + 'import codelm_os "os"\n' + prompt + completion + "\n" + problem["test"] + "\n"
            "func TestMain(m *testing.M) {\n"
            "    code := m.Run()\n"
            f'    if code == 0 {{\n        codelm_os.Stdout.Write([]byte("{nonce}\\n"))\n    }}\n'
            "    codelm_os.Exit(code)\n}\n")


def _rust(bench, problem, completion, nonce):
    return (problem["prompt"] + problem["declaration"] + completion + "\n" + problem["test"] + "\n"
            "#[cfg(test)]\nmod zzzz_codelm_verdict {\n    #[test]\n    fn zzzz_nonce() {\n"
            "        use std::io::Write;\n"
            f'        std::io::stdout().write_all(b"{nonce}\\n").unwrap();\n'
            "        std::io::stdout().flush().unwrap();\n    }\n}\n")


SOURCES = {"cpp": _cpp, "java": _java, "js": _js, "go": _go, "rust": _rust}


class HumanEvalXInfilling(Infilling):
    """Single-line infilling in each language: one task per non-blank line of a canonical solution's body (the line
    before the function's closing brace and everything above it; as HumanEval-infilling's single-line set does for
    Python). The middle is the line with its newline; prompt and suffix are the rest of the benchmark's prompt and
    solution. Scored by execution (the full HumanEval-X program) and by exact match (evals/infilling.py)."""

    def __init__(self, base: HumanEvalX, mode: str = "fim"):
        problems = {}
        for problem in base.problems.values():
            for task in infilling_tasks(base, problem):
                problems[task["task_id"]] = task
        super().__init__(problems, base.source, "single-line", mode)
        self.base = base
        self.name = f"humaneval-x-infilling/{base.language}"
        self.cpu_s = base.cpu_s

    def _completion(self, problem, middle):
        """The completion of the original problem that the infill makes: solution lines above + middle + below."""
        return problem["solution_prefix"] + middle + problem["suffix"]

    def program(self, problem, completion, nonce: str = "NONCE"):
        return self.base.program(self.base.problems[problem["problem_id"]], self._completion(problem, completion),
                                 nonce)

    def runnable(self, problem, completion):
        return partial(self.base.sandbox_program, self.base.problems[problem["problem_id"]],
                       self._completion(problem, completion))

    def unavailable(self, problem):
        return self.base.unavailable(self.base.problems[problem["problem_id"]])

    def protocol_extras(self):
        return {"mode": self.mode, "language": self.base.language}


def infilling_tasks(base: HumanEvalX, problem: dict) -> list[dict]:
    solution = problem["canonical_solution"]
    lines = solution.splitlines(keepends=True)
    tasks = []
    for i, line in enumerate(lines):
        if not line.strip() or _closes_function(lines, i):
            continue
        before, after = "".join(lines[:i]), "".join(lines[i + 1:])
        middle = line if line.endswith("\n") else line + "\n"
        tasks.append({"task_id": f"SingleLineInfilling/{problem['task_id']}/L{i}", "problem_id": problem["task_id"],
                      "prompt": base.prompt(problem) + before, "solution_prefix": before, "suffix": after,
                      "canonical_solution": middle, "entry_point": ""})
    return tasks


def _closes_function(lines: list[str], i: int) -> bool:
    """The last non-blank line, a lone closing brace: the end of the function (Java: the class), not its body."""
    rest = [line for line in lines[i:] if line.strip()]
    return len(rest) == 1 or (len(rest) == 2 and lines[i].strip() == "}" and rest[1].strip() == "}")


def load(language: str, data_dir=None) -> HumanEvalX:
    if language not in LANGUAGES:
        raise EvalInputError(f"unknown HumanEval-X language {language!r}; choose from {', '.join(LANGUAGES)}")
    name = f"humaneval_{language}.jsonl.gz"
    path = find_or_download(f"humaneval-x/{name}", f"{UPSTREAM}{language}/data/{name}", CACHE_DIR,
                            f"HumanEval-X file {name}", data_dir)
    problems = {row["task_id"]: row for _, row in read_jsonl(path)}
    go_module = _go_module(data_dir) if language == "go" else None
    return HumanEvalX(problems, str(path), language, go_module)


def load_infilling(language: str, data_dir=None, mode: str = "fim") -> HumanEvalXInfilling:
    return HumanEvalXInfilling(load(language, data_dir), mode)


def _go_module(data_dir) -> dict:
    """go.mod and the vendored modules, unpacked once into the sandbox's read-only toolchain cache."""
    from sandbox import toolchains

    found = {}
    for name in ("go.mod", "vendor.tar.gz"):
        path, tried = find_local_file(f"humaneval-x/go/{name}", data_dir)
        if path is None:
            raise EvalInputError(f"HumanEval-X Go module file {name} not found; tried " + "; ".join(tried))
        found[name] = path
    archive = found["vendor.tar.gz"].read_bytes()

    def unpack(tmp: Path):
        with tarfile.open(fileobj=gzip.GzipFile(fileobj=io.BytesIO(archive))) as tar:
            tar.extractall(tmp, filter="data")
        for path in tmp.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)

    root = toolchains.build_once("humaneval-x-go-vendor", hashlib.sha256(archive).hexdigest()[:16], unpack)
    return {"go.mod": found["go.mod"].read_text(), "vendor": str(root / "vendor"), "warm_imports": GO_TEST_IMPORTS}
