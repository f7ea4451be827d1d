"""Finding benchmark data: --data-dir, $CODELM_DATA_DIR, shared/data near the repo, then the hub, named on failure."""

import pytest

from evals import infilling, mbpp
from evals.data import EvalInputError, find_local_file, read_samples


def test_an_explicit_directory_comes_first(tmp_path, monkeypatch):
    (tmp_path / "mbpp").mkdir()
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("")
    monkeypatch.setenv("CODELM_DATA_DIR", "/nonexistent")
    path, tried = find_local_file("mbpp/mbpp.jsonl", tmp_path)
    assert path == tmp_path / "mbpp" / "mbpp.jsonl" and tried == []


def test_the_environment_variable_comes_before_the_repository(tmp_path, monkeypatch):
    (tmp_path / "humaneval-infilling").mkdir()
    (tmp_path / "humaneval-infilling" / "x.jsonl.gz").write_bytes(b"")
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    path, _ = find_local_file("humaneval-infilling/x.jsonl.gz")
    assert path == tmp_path / "humaneval-infilling" / "x.jsonl.gz"


def test_the_shared_data_beside_the_repository_is_found(monkeypatch):
    monkeypatch.delenv("CODELM_DATA_DIR", raising=False)
    benchmark = mbpp.load()
    assert benchmark.source.endswith("shared/data/mbpp/mbpp.jsonl")
    assert list(benchmark.problems)[0] == "Mbpp/11" and list(benchmark.problems)[-1] == "Mbpp/510"
    assert len(benchmark.problems) == 500


def test_missing_data_names_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr("evals.data.REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(infilling, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(infilling, "UPSTREAM", "file:///nonexistent/")  # keep the test offline and quick
    with pytest.raises(EvalInputError) as error:
        infilling.load("single-line", data_dir=tmp_path / "given")
    message = str(error.value)
    for place in ("given", "env", "repo", "cache", "nonexistent"):
        assert place in message
    assert "\n" not in message


def test_sample_file_errors_name_the_file_line_and_field(samples_file):
    resolve = {"HumanEval/0": "HumanEval/0"}.get
    cases = [
        ('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/0"', ":2: not valid JSON"),
        ('{"completion": "x"}', ":1: missing field 'task_id'"),
        ('{"task_id": "HumanEval/0", "completion": 3}', ":1: field 'completion' is not a string"),
        ('\n{"task_id": "HumanEval/0"}', ":2: field 'completion' is missing"),
        ('{"task_id": "HumanEval/999", "completion": ""}', ":1: field 'task_id': unknown task id 'HumanEval/999'"),
        ('[1, 2]', ":1: expected a JSON object"),
    ]
    for i, (text, expected) in enumerate(cases):
        path = samples_file([], name=f"bad{i}.jsonl")
        path.write_text(text)
        with pytest.raises(EvalInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            read_samples(path, resolve)


def test_completion_ids_count_samples_per_task_in_file_order(samples_file):
    path = samples_file([{"task_id": t, "completion": c} for t, c in [("a", "1"), ("b", "2"), ("a", "3")]])
    samples = read_samples(path, lambda t: t)
    assert [(s["task_id"], s["completion_id"]) for s in samples] == [("a", 0), ("b", 0), ("a", 1)]


def test_mbpp_task_ids_in_any_common_spelling():
    benchmark = mbpp.load()
    for raw in (11, "11", "Mbpp/11", "MBPP/11"):
        assert benchmark.resolve_task_id(raw) == "Mbpp/11"
    for raw in (10, 511, "HumanEval/11", None):
        assert benchmark.resolve_task_id(raw) is None
