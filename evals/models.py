"""What a benchmark needs from a model: left-to-right completion and infilling, batched, with per-sample seeds.

Benchmarks talk to this protocol only, so scoring works without any model and tests use small fakes.
"""

from typing import Protocol


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


def load_model(path_or_name: str | None, device: str = "auto", *, endpoint: str | None = None,
               **endpoint_options) -> CompletionModel:
    """A codelm checkpoint, run directory (its latest checkpoint) or Hugging Face model directory as a
    CompletionModel; with `endpoint`, the model of that name behind an OpenAI-compatible API (evals/endpoint.py).
    Imported lazily so that `codelm eval --samples` never loads torch."""
    if endpoint is not None:
        from evals.endpoint import EndpointModel
        return EndpointModel(endpoint, path_or_name or "default", **endpoint_options)
    from codelm.loader import load_checkpoint

    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return CodelmModel(load_checkpoint(path_or_name, device=device))


class CodelmModel:
    """CompletionModel over codelm's decoding (codelm/generate.py, codelm/infill.py). The benchmark runner already
    hands over batches of prompts; each batch decodes as one left-padded batch with one prefill per prompt."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.name = str(checkpoint.path)
        self.capabilities = checkpoint.capabilities

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
        from codelm.infill import fim_infill, infill, require_mode
        ck = self.checkpoint
        require_mode(self.capabilities, mode)
        params = self._params(temperature, top_p, max_new_tokens, stop)
        if mode == "fim":
            out = fim_infill(ck.model, ck.tokenizer, prefixes, suffixes, params, [list(s) for s in seeds], n,
                             capabilities=self.capabilities)
            return [[c.text for c in row] for row in out]
        # meet-in-the-middle decodes one (prefix, suffix) at a time: its two sides already form the batch
        return [[c.text for c in infill(ck.model, ck.tokenizer, p, s, "mim", params, n=n, seeds=list(sd),
                                        capabilities=self.capabilities).samples]
                for p, s, sd in zip(prefixes, suffixes, seeds)]
