"""experiments/published/reproduce.py on tiny models (no weights can be downloaded here): each row runs codelm eval
with the paper's protocol and the table prints our number beside the paper's."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from hf_tiny import save_model_dir  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "published" / "reproduce.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_protocols_are_the_papers():
    reproduce = load_script()
    args = type("A", (), dict(backend="auto", dtype="auto", device="auto", limit=None, max_new_tokens=None, n=None))
    greedy = next(r for r in reproduce.TABLE if r.model == "deepseek-coder-1.3b-base" and r.benchmark == "mbpp")
    argv = reproduce.eval_argv(greedy, "M", Path("o"), args)
    assert argv[:3] == ["eval", "mbpp", "M"] and "3shot" in argv and argv[argv.index("-k") + 1] == "1"
    assert "--temperature" not in argv and "--limit" not in argv  # greedy, every task
    sampled = next(r for r in reproduce.TABLE if r.metric == "pass@100")
    argv = reproduce.eval_argv(sampled, "M", Path("o"), args)
    assert argv[argv.index("--n") + 1] == "200" and argv[argv.index("--temperature") + 1] == "0.8"
    assert argv[argv.index("-k") + 1] == "1,10,100"
    # SantaCoder's pass@1 is the Codex protocol's (n=200 at T=0.2); its pass@10 and pass@100 share one T=0.8 run
    santa = [r for r in reproduce.TABLE if r.model == "santacoder" and r.benchmark == "humaneval"]
    assert {r.metric: r.temperature for r in santa} == {"pass@1": 0.2, "pass@10": 0.8, "pass@100": 0.8}
    assert santa[1].protocol == santa[2].protocol != santa[0].protocol
    # StarCoder 2 reports MBPP through EvalPlus: the row runs --plus and reads the base tests' rate
    sc2 = next(r for r in reproduce.TABLE if r.model == "starcoder2-3b" and r.benchmark == "mbpp")
    argv = reproduce.eval_argv(sc2, "M", Path("o"), args)
    assert "--plus" in argv and sc2.metric == "base_pass_rate"


def test_a_tiny_phi_runs_its_rows_and_the_table_prints_both_numbers(tmp_path, capsys):
    save_model_dir(tmp_path / "phi", "phi")
    code = load_script().main(["--model", f"phi-1={tmp_path / 'phi'}", "--limit", "1", "--max-new-tokens", "4",
                               "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    table = out[out.index("ours beside"):].splitlines()
    assert "TRIAL" in table[0]
    rows = [line.split() for line in table[2:]]
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [("phi-1", "humaneval", "pass@1", "50.6"),
                                                        ("phi-1", "mbpp", "pass@1", "55.5")]
    assert all(0.0 <= float(r[3]) <= 100.0 for r in rows)
    assert (tmp_path / "out" / "phi-1" / "humaneval-greedy" / "summary.json").is_file()


def test_a_model_name_the_table_does_not_know_is_refused(capsys):
    assert load_script().main(["--model", "gpt-5=/x"]) == 2
    assert capsys.readouterr().err.startswith("codelm: error: --model 'gpt-5=/x'")


def test_a_tiny_santacoder_runs_its_rows_infilling_with_its_own_template(tmp_path, capsys):
    """A tiny GPT-BigCode model with SantaCoder's hyphenated FIM tokens: the infilling row runs (its family's template,
    not a refusal) and the sampled rows share one run at T=0.8."""
    save_model_dir(tmp_path / "santa", "gpt_bigcode", "santacoder")
    code = load_script().main(["--model", f"santacoder={tmp_path / 'santa'}", "--limit", "1", "--max-new-tokens", "4",
                               "--n", "10", "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out[out.index("ours beside"):].splitlines()[2:]]
    assert [(r[1], r[2], r[4]) for r in rows] == [("humaneval", "pass@1", "18.0"), ("humaneval", "pass@10", "29.0"),
                                                  ("humaneval", "pass@100", "49.0"),
                                                  ("infilling-single-line", "exact_match", "44.0")]
    assert rows[2][3] == "n/a"  # 10 samples estimate no pass@100
    assert all(0.0 <= float(r[3]) <= 100.0 for r in (rows[0], rows[1], rows[3]))
    runs = sorted(p.name for p in (tmp_path / "out" / "santacoder").iterdir())
    assert runs == ["humaneval-n200-t0.2", "humaneval-n200-t0.8", "infilling-single-line-greedy"]
