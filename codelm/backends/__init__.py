"""Model backends other than codelm's own Transformer: they load a model codelm's architecture cannot express and
generate with the same contract (codelm/generate.py's Completion, SamplingParams and per-sample seeds).

    transformers_lm.TransformersLM   any AutoModelForCausalLM architecture, codelm's decode loop over its forward
    vllm_lm.VllmLM                   vLLM's offline engine (its own environment; see `make vllm-env`)

Each is imported lazily by whoever needs it (eval, sample, infill, serve), so codelm itself never needs transformers.
"""
