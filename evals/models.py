"""What a benchmark needs from a model: left-to-right completion and infilling, batched, with per-sample seeds.

Benchmarks talk to this protocol only, so scoring works without any model and tests use small fakes.
"""

from typing import Protocol

from evals.data import EvalInputError


class CompletionModel(Protocol):
    name: str

    def complete(self, prompts: list[str], *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                 stop: list[str], seeds: list[list[int]]) -> list[list[str]]:
        """For each prompt, n continuations (text after the prompt). seeds[i][j] seeds sample j of prompt i;
        temperature 0 means greedy. Generation may stop at a stop sequence; the benchmark truncates again anyway."""
        ...

    def infill(self, prefixes: list[str], suffixes: list[str], *, mode: str, n: int, temperature: float,
               top_p: float, max_new_tokens: int, stop: list[str], seeds: list[list[int]]) -> list[list[str]]:
        """For each (prefix, suffix), n middles. mode is "fim" (PSM/SPM prompt, Bavarian et al. 2022) or "mim"
        (meet-in-the-middle decoding, Nguyen et al. 2023)."""
        ...


MODEL_BACKENDS = ("auto", "codelm", "transformers", "vllm", "endpoint")


def load_model(path_or_name: str | None, device: str = "auto", *, endpoint: str | None = None,
               backend: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
               compile: str = "auto", planned_tokens: int = 0,
               vllm_options: dict | None = None, **endpoint_options) -> CompletionModel:
    """A model as a CompletionModel, through one of the backends:

      codelm        a codelm checkpoint or run directory (its latest checkpoint), or a Llama-architecture Hugging Face
                    directory converted into codelm's Transformer (codelm/hf.py): the fast path on a CPU
      transformers  any AutoModelForCausalLM architecture in a Hugging Face directory (codelm/backends)
      vllm          vLLM's offline engine over a Hugging Face directory (its own environment: make vllm-env)
      endpoint      the model of that name behind an OpenAI-compatible API (evals/endpoint.py); --endpoint implies it
      auto          endpoint with --endpoint, else codelm for what codelm loads, else transformers

    Imported lazily so that `codelm eval --samples` never loads torch."""
    if backend not in MODEL_BACKENDS:
        raise EvalInputError(f"unknown model backend {backend!r}; choose from {', '.join(MODEL_BACKENDS)}")
    if endpoint is not None or backend == "endpoint":
        if endpoint is None:
            raise EvalInputError("--backend endpoint needs --endpoint URL")
        from evals.endpoint import EndpointModel
        return EndpointModel(endpoint, path_or_name or "default", **endpoint_options)
    if not path_or_name:
        raise EvalInputError("no model given")
    if backend == "auto":
        from codelm.backends import auto_backend
        backend = auto_backend(path_or_name)
    if backend == "transformers":
        from codelm.backends.transformers_lm import TransformersLM
        return TransformersModel(TransformersLM.load(path_or_name, device=device, dtype=dtype,
                                                     trust_remote_code=trust_remote_code))
    if backend == "vllm":
        from codelm.backends.vllm_lm import VllmLM
        return VllmModel(VllmLM.load(path_or_name, dtype=dtype, trust_remote_code=trust_remote_code,
                                     **(vllm_options or {})))
    from codelm.loader import load_checkpoint

    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = None  # auto: as codelm decodes today (fp32 weights)
    if dtype != "auto":
        from codelm.backends.transformers_lm import DTYPES
        if dtype not in DTYPES:
            raise EvalInputError(f"--dtype: unknown dtype {dtype!r} (auto, {', '.join(DTYPES)})")
        torch_dtype = DTYPES[dtype]
    from codelm.compiled import apply_compile_setting

    ckpt = load_checkpoint(path_or_name, device=device, dtype=torch_dtype)
    apply_compile_setting(ckpt.model, compile, planned_tokens)
    return CodelmModel(ckpt)


def backend_versions(*names: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("torch", *names):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


class CodelmModel:
    """CompletionModel over codelm's decoding (codelm/generate.py, codelm/infill.py). The benchmark runner already
    hands over batches of prompts; each batch decodes as one left-padded batch (completion and FIM: one prefill per
    prompt; meet-in-the-middle: two rows per sample)."""

    backend = "codelm"

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.name = str(checkpoint.path)
        self.capabilities = checkpoint.capabilities

    def describe_backend(self) -> dict:
        param = next(self.checkpoint.model.parameters())
        return {"backend": "codelm", "dtype": str(param.dtype).removeprefix("torch."), "device": str(param.device),
                "versions": backend_versions()}

    def _params(self, temperature, top_p, max_new_tokens, stop):
        from codelm.generate import SamplingParams
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=list(stop))

    def complete(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seeds):
        from codelm.generate import generate_batch
        ck = self.checkpoint
        out = generate_batch(ck.model, ck.tokenizer, prompts, self._params(temperature, top_p, max_new_tokens, stop),
                             seeds=[list(s) for s in seeds], n=n, capabilities=self.capabilities)
        return [[c.text for c in row] for row in out]

    def infill(self, prefixes, suffixes, *, mode, n, temperature, top_p, max_new_tokens, stop, seeds):
        # one batch per call in either mode: FIM rows, or both meet-in-the-middle directions of every sample
        from codelm.infill import infill_batch
        ck = self.checkpoint
        out = infill_batch(ck.model, ck.tokenizer, prefixes, suffixes, mode,
                           self._params(temperature, top_p, max_new_tokens, stop), n, [list(s) for s in seeds],
                           self.capabilities)
        return [[c.text for c in row] for row in out]


class TransformersModel:
    """CompletionModel over the transformers backend (codelm/backends/transformers_lm.py): completion for any
    architecture; infilling through the model family's FIM template (meet-in-the-middle needs a model trained for
    it, which only codelm trains)."""

    backend = "transformers"

    def __init__(self, lm):
        self.lm = lm
        self.name = lm.name
        self.capabilities = {}  # nothing recorded about its training data: provenance says so (None), no warning

    def describe_backend(self) -> dict:
        info = self.lm.describe()
        info["versions"] = backend_versions("transformers", "tokenizers")
        return info

    @staticmethod
    def _params(temperature, top_p, max_new_tokens, stop):
        from codelm.generate import SamplingParams
        return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=list(stop))

    def complete(self, prompts, *, n, temperature, top_p, max_new_tokens, stop, seeds):
        out = self.lm.complete(prompts, self._params(temperature, top_p, max_new_tokens, stop),
                               seeds=[list(s) for s in seeds], n=n)
        return [[c.text for c in row] for row in out]

    def infill(self, prefixes, suffixes, *, mode, n, temperature, top_p, max_new_tokens, stop, seeds):
        if mode != "fim":
            raise EvalInputError(f"{self.name}: the transformers backend infills with --mode fim only "
                                 f"(meet-in-the-middle needs a codelm model trained with the mim objective)")
        out = self.lm.infill(prefixes, suffixes, self._params(temperature, top_p, max_new_tokens, stop),
                             seeds=[list(s) for s in seeds], n=n)
        return [[c.text for c in row] for row in out]


class VllmModel(TransformersModel):
    """CompletionModel over vLLM's offline engine (codelm/backends/vllm_lm.py): the same calls."""

    backend = "vllm"

    def describe_backend(self) -> dict:
        info = self.lm.describe()
        info["versions"] = backend_versions("vllm", "transformers")
        return info
