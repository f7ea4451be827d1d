"""`codelm eval ...` as a user types it: scoring sample files, clear errors with exit code 2."""

import json

import pytest

from evals import humaneval
from evals.cli import main, parse_ks


def canonical_rows(task_ids):
    problems = humaneval.load().problems
    return [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in task_ids]


def test_scoring_a_sample_file_writes_results_summary_and_a_table(samples_file, tmp_path, capsys):
    path = samples_file(canonical_rows(["HumanEval/0", "HumanEval/1"]) + [{"task_id": "HumanEval/0", "completion": ""}])
    code = main(["eval", "humaneval", "--samples", str(path), "--output", str(tmp_path / "out"), "--limit", "2",
                 "-k", "1,2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "pass@1" in out and "75.00%" in out and "first 2 of all 164 tasks" in out and "pass@2" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["pass@1"] == 0.75 and "pass@2" in summary["withheld"]
    rows = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
    assert {"task_id", "completion", "passed", "result", "status", "wall_s", "cpu_s"} <= rows[0].keys()


def test_the_default_output_sits_beside_the_sample_file(samples_file, tmp_path):
    path = samples_file(canonical_rows(["HumanEval/0"]), name="mine.jsonl")
    assert main(["eval", "humaneval", "--samples", str(path), "--limit", "1"]) == 0
    assert (tmp_path / "mine_humaneval_results" / "summary.json").exists()


def test_infilling_and_mbpp_sample_files(samples_file, tmp_path, capsys):
    from evals import infilling
    problems = infilling.load("random-span-light").problems
    path = samples_file([{"task_id": t, "completion": p["canonical_solution"]} for t, p in list(problems.items())[:3]])
    assert main(["eval", "infilling", "--set", "random-span-light", "--samples", str(path), "--limit", "3",
                 "--output", str(tmp_path / "i")]) == 0
    assert "exact_match" in capsys.readouterr().out
    path = samples_file([{"task_id": 11, "completion": "def remove_Occ(s, ch):\n    return s\n"}], name="m.jsonl")
    assert main(["eval", "mbpp", "--samples", str(path), "--tasks", "11", "--output", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "summary.json").read_text())["pass@1"] == 0.0


@pytest.mark.parametrize("content, message", [
    ('{"task_id": "HumanEval/0", "completion": ""}\nnot json\n', "bad.jsonl:2: not valid JSON"),
    ('{"task_id": "HumanEval/0", "completion": null}\n', "bad.jsonl:1: field 'completion' is not a string"),
    ('{"task_id": "HumanEval/999", "completion": ""}\n', "bad.jsonl:1: field 'task_id': unknown task id"),
])
def test_bad_sample_files_exit_2_with_one_line_naming_the_place(tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["eval", "humaneval", "--samples", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "humaneval"], "either MODEL or --samples"),
    (["eval", "humaneval", "some/checkpoint"], "no such checkpoint or run directory: some/checkpoint"),
    (["eval", "humaneval", "--samples", "/nonexistent.jsonl"], "sample file not found"),
    (["eval", "humaneval", "ckpt", "-k", "10", "--n", "5"], "pass@10 needs at least 10 samples"),
    (["eval", "humaneval", "ckpt", "-k", "x"], "-k takes positive integers"),
])
def test_usage_errors_exit_2(argv, message, capsys, tmp_path):
    assert main(argv + ["--output", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_k_accepts_repeats_and_comma_lists():
    assert parse_ks(["1", "10,100"]) == [1, 10, 100]
    assert parse_ks(None) == [1]


def test_every_flag_of_the_brief_parses():
    import argparse
    from codelm.config import resolve_config
    from evals.cli import EvalConfig, add_eval_parser
    parser = argparse.ArgumentParser(prog="codelm")
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "infilling", "run/dir", "--set", "multi-line", "--mode", "mim", "-k", "1",
                              "-k", "10", "--n", "20", "--temperature", "0.8", "--top-p", "0.95",
                              "--max-new-tokens", "128", "--limit", "5", "--seed", "3", "--data-dir", "d",
                              "--workers", "2", "--backend", "docker", "--timeout", "5", "--output", "o"])
    cfg = resolve_config(EvalConfig, args)
    assert (cfg.model, cfg.infilling_set, cfg.mode, cfg.k, cfg.n) == ("run/dir", "multi-line", "mim", ["1", "10"], 20)
    assert (cfg.benchmark, cfg.temperature, cfg.workers, cfg.backend, cfg.data_dir) == ("infilling", 0.8, 2,
                                                                                        "docker", "d")
    args = parser.parse_args(["eval", "mbpp", "--samples", "s.jsonl", "--mbpp-format", "3shot", "--plus"])
    cfg = resolve_config(EvalConfig, args)
    assert cfg.mbpp_format == "3shot" and cfg.plus is True and args.func.__name__ == "run_eval_command"


def test_importing_the_cli_stays_light():
    import subprocess
    import sys
    code = "import sys, evals.cli; print(sorted(m for m in ('torch', 'sandbox', 'datasets', 'numpy') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def parse_eval(*argv):
    import argparse
    from codelm.config import resolve_config
    from evals.cli import EvalConfig, add_eval_parser
    parser = argparse.ArgumentParser(prog="codelm")
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "humaneval", *argv])
    return resolve_config(EvalConfig, args, args.config)


def test_backend_names_the_model_backend_and_the_old_sandbox_spelling_still_works(capsys):
    from evals.cli import resolve_backends
    from evals.data import EvalInputError
    assert resolve_backends(parse_eval("m")) == ("local", "auto")
    assert resolve_backends(parse_eval("m", "--backend", "transformers", "--sandbox", "docker")) == \
        ("docker", "transformers")
    assert capsys.readouterr().err == ""
    assert resolve_backends(parse_eval("m", "--backend", "docker")) == ("docker", "auto")
    assert "--backend docker is deprecated" in capsys.readouterr().err
    assert resolve_backends(parse_eval("--endpoint", "http://x/v1")) == ("local", "endpoint")
    with pytest.raises(EvalInputError, match="contradicts"):
        resolve_backends(parse_eval("m", "--backend", "docker", "--sandbox", "local"))
    with pytest.raises(EvalInputError, match="cannot be combined"):
        resolve_backends(parse_eval("--endpoint", "http://x/v1", "--backend", "transformers"))
    args = parse_eval("m", "--dtype", "bfloat16", "--device", "cpu", "--trust-remote-code",
                      "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.5")
    assert (args.dtype, args.device, args.trust_remote_code, args.tensor_parallel_size,
            args.gpu_memory_utilization) == ("bfloat16", "cpu", True, 2, 0.5)
