"""`codelm eval` with the model backends: auto picks transformers for an architecture codelm cannot convert (Phi),
codelm for a Llama directory; the report records the backend, dtype and versions; a run resumed with another backend
is refused; infilling goes through the family's FIM template."""

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: hf_tiny

from hf_tiny import make_model, make_tokenizer  # noqa: E402


def hf_dir(root: Path, arch: str, family=None) -> Path:
    tok = make_tokenizer(family, bos=False)
    model = make_model(arch, len(tok.get_vocab()))
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = None, tok.eos_token_id
    path = root / arch
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_auto_backend_choice(tmp_path):
    from codelm.backends import auto_backend
    assert auto_backend(str(hf_dir(tmp_path, "phi"))) == "transformers"
    assert auto_backend(str(hf_dir(tmp_path, "llama"))) == "codelm"
    assert auto_backend(str(tmp_path / "a-codelm-run")) == "codelm"


def test_eval_through_the_transformers_backend_records_it_and_refuses_another_on_resume(tmp_path, capsys):
    from evals.cli import main
    model = hf_dir(tmp_path, "llama", family="starcoder")
    out = tmp_path / "eval"
    argv = ["eval", "infilling", str(model), "--set", "single-line", "--limit", "2", "--max-new-tokens", "4",
            "--output", str(out)]
    assert main(argv + ["--backend", "transformers"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    provenance = summary["protocol"]["provenance"]
    assert provenance["backend"] == "transformers" and provenance["architecture"] == "LlamaForCausalLM"
    assert provenance["dtype"] == "float32" and provenance["fim_family"] == "starcoder"
    assert provenance["versions"]["transformers"] and provenance["versions"]["torch"]
    assert main(argv) == 2  # auto: codelm, which converts a Llama directory
    assert "differs in: model_backend" in capsys.readouterr().err


def test_a_model_without_fim_tokens_is_refused_for_infilling_in_one_line(tmp_path, capsys):
    from evals.cli import main
    model = hf_dir(tmp_path, "phi")
    assert main(["eval", "infilling", str(model), "--limit", "1", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("codelm: error: ") and "no FIM tokens" in err[-1]
