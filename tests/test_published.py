"""experiments/published/reproduce.py on tiny models (no weights can be downloaded here): each row runs codelm eval
with the paper's protocol and the table prints our number beside the paper's."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from hf_tiny import make_model, make_tokenizer  # noqa: E402

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
    sampled = next(r for r in reproduce.TABLE if r.sampled)
    argv = reproduce.eval_argv(sampled, "M", Path("o"), args)
    assert argv[argv.index("--n") + 1] == "200" and argv[argv.index("--temperature") + 1] == "0.8"


def test_a_tiny_phi_runs_its_rows_and_the_table_prints_both_numbers(tmp_path, capsys):
    tok = make_tokenizer(None)
    model = make_model("phi", len(tok.get_vocab()))
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = None, tok.eos_token_id
    model.save_pretrained(tmp_path / "phi")
    tok.save_pretrained(tmp_path / "phi")
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
    assert (tmp_path / "out" / "phi-1" / "humaneval-pass@1" / "summary.json").is_file()


def test_a_model_name_the_table_does_not_know_is_refused(capsys):
    assert load_script().main(["--model", "gpt-5=/x"]) == 2
    assert capsys.readouterr().err.startswith("codelm: error: --model 'gpt-5=/x'")
