"""Model backends other than codelm's own Transformer: they load a model codelm's architecture cannot express and
generate with the same contract (codelm/generate.py's Completion, SamplingParams and per-sample seeds).

    transformers_lm.TransformersLM   any AutoModelForCausalLM architecture, codelm's decode loop over its forward
    vllm_lm.VllmLM                   vLLM's offline engine (its own environment; see `make vllm-env`)

Each is imported lazily by whoever needs it (eval, sample, infill, serve), so codelm itself never needs transformers.
"""


def auto_backend(path: str) -> str:
    """`--backend auto`: codelm for a codelm checkpoint or run directory, and for a Hugging Face directory codelm
    converts (Llama architecture, tokenizer.json); transformers for any other Hugging Face directory. Reads config
    files only."""
    import json
    from pathlib import Path

    from codelm.errors import ConfigError
    from codelm.hf import is_hf_model_dir, model_config_from_hf

    if not is_hf_model_dir(path):
        return "codelm"
    try:
        model_config_from_hf(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")), path)
    except ConfigError:
        return "transformers"
    return "codelm" if (Path(path) / "tokenizer.json").is_file() else "transformers"
