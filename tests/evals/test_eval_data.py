"""Finding benchmark data: --data-dir, $CODELM_DATA_DIR where it holds the file, the packaged copy, then the hub;
named on failure."""

import gzip

import pytest

from codelm import benchdata
from evals import infilling, mbpp
from evals.data import EvalInputError, find_local_file, read_samples


def test_an_explicit_directory_comes_first(tmp_path, monkeypatch):
    (tmp_path / "mbpp").mkdir()
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("")
    monkeypatch.setenv("CODELM_DATA_DIR", "/nonexistent")
    path, tried = find_local_file("mbpp/mbpp.jsonl", tmp_path)
    assert path == tmp_path / "mbpp" / "mbpp.jsonl" and tried == []


def test_the_environment_variable_overrides_only_the_files_it_holds(tmp_path, monkeypatch):
    (tmp_path / "humaneval-infilling").mkdir()
    (tmp_path / "humaneval-infilling" / "x.jsonl.gz").write_bytes(b"")
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    path, _ = find_local_file("humaneval-infilling/x.jsonl.gz")
    assert path == tmp_path / "humaneval-infilling" / "x.jsonl.gz"
    path, tried = find_local_file("mbpp/mbpp.jsonl")  # not in that directory: the packaged copy
    assert path == benchdata.PACKAGE_DIR / "mbpp" / "mbpp.jsonl.gz"
    assert tried == [f"{tmp_path / 'mbpp' / 'mbpp.jsonl'} ($CODELM_DATA_DIR)"]


def test_an_uncompressed_override_of_a_packaged_file_is_read(tmp_path, monkeypatch):
    (tmp_path / "mbpp").mkdir()
    with gzip.open(benchdata.PACKAGE_DIR / "mbpp" / "mbpp.jsonl.gz", "rt") as f:
        rows = f.read().splitlines()
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text("\n".join(rows[:600]) + "\n")  # ids 1..600 cover the test split
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    benchmark = mbpp.load()
    assert benchmark.source == str(tmp_path / "mbpp" / "mbpp.jsonl") and len(benchmark.problems) == 500


def test_every_evaluation_loads_from_the_package_when_the_data_dir_is_empty(tmp_path, monkeypatch):
    """A clone with no data folder and no network: CODELM_DATA_DIR names an empty directory and the hub is
    unreachable. Every benchmark still loads, from the package."""
    from evals import evalplus, humaneval
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path))
    for module in (infilling, evalplus):
        monkeypatch.setattr(module, "UPSTREAM", "file:///nonexistent/" if module is infilling else
                            {k: "file:///nonexistent/" for k in module.UPSTREAM})
        monkeypatch.setattr(module, "CACHE_DIR", tmp_path / "cache")
    sizes = {"humaneval": len(humaneval.load().problems), "mbpp": len(mbpp.load().problems)}
    for set_name, expected in (("single-line", 1033), ("multi-line", 5815), ("random-span", 1640),
                               ("random-span-light", 164)):
        benchmark = infilling.load(set_name)
        assert benchmark.source.startswith(str(benchdata.PACKAGE_DIR)) and len(benchmark.problems) == expected
    sizes["humaneval+"] = len(evalplus.load_humaneval_plus().problems)
    sizes["mbpp+"] = len(evalplus.load_mbpp_plus().problems)
    assert sizes == {"humaneval": 164, "mbpp": 500, "humaneval+": 164, "mbpp+": 378}
    assert not (tmp_path / "cache").exists()  # nothing was fetched


def test_the_evaluations_run_from_the_package_and_record_which_data_they_read(tmp_path, monkeypatch):
    """With CODELM_DATA_DIR naming an empty directory, each evaluation generates, scores and reports (its reference
    answers pass), and the report's provenance names the packaged file and its content hash."""
    from evals import evalplus
    from evals.runner import evaluate_model, resolve_sampling
    from fake_models import ReferenceModel
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    hashes = benchdata.packaged_hashes()
    for name, load, packaged_file in (
            ("mbpp", mbpp.load, "mbpp/mbpp.jsonl.gz"),
            ("infilling", infilling.load, "humaneval-infilling/HumanEval-SingleLineInfilling.jsonl.gz"),
            ("humaneval+", evalplus.load_humaneval_plus, "evalplus/HumanEvalPlus.jsonl.gz"),
            ("mbpp+", evalplus.load_mbpp_plus, "evalplus/MbppPlus.jsonl.gz")):
        benchmark = load()
        summary = evaluate_model(benchmark, ReferenceModel(benchmark), tmp_path / name, resolve_sampling([1]),
                                 limit=2, progress_every=0)
        assert summary["pass@1"] == 1.0, name
        data = summary["protocol"]["provenance"]["data"]
        assert data == {"path": f"codelm/benchdata/{packaged_file}", "packaged": True,
                        "sha256": hashes[packaged_file]}, name


def test_packaged_files_match_their_recorded_hashes():
    hashes = benchdata.packaged_hashes()
    assert set(hashes) == {str(p.relative_to(benchdata.PACKAGE_DIR)) for p in benchdata.PACKAGE_DIR.rglob("*.gz")}
    for name, digest in hashes.items():
        assert benchdata.content_sha256(benchdata.PACKAGE_DIR / name) == digest, name


def test_a_file_found_nowhere_names_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("CODELM_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(benchdata, "PACKAGE_DIR", tmp_path / "package")
    monkeypatch.setattr(infilling, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(infilling, "UPSTREAM", "file:///nonexistent/")  # keep the test offline and quick
    with pytest.raises(EvalInputError) as error:
        infilling.load("single-line", data_dir=tmp_path / "given")
    message = str(error.value)
    for place in ("given", "env", "package", "cache", "nonexistent"):
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
