"""The vLLM backend: its requests (one per sample, n=1, each with its own seed; the family FIM prompt as token ids;
stop ids and strings) and how its outputs become Completions are checked here on a stand-in engine; generation with
real vLLM runs where vLLM is importable (its own environment: `make vllm-env`; it is not installable beside the main
environment's torch), and on the GPU check script."""

from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

from codelm.generate import SamplingParams  # noqa: E402
from hf_tiny import make_model, make_tokenizer  # noqa: E402


class StandInEngine:
    """Answers every request with fixed tokens: enough to check what the backend asks for and how it reads answers."""

    def __init__(self, answer_ids, finish_reason="stop"):
        self.answer_ids, self.finish_reason, self.calls = answer_ids, finish_reason, []

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append((prompts, params))
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=self.answer_ids, finish_reason=self.finish_reason)])
                for _ in prompts]


@pytest.fixture(scope="module")
def backend():
    from codelm.backends.vllm_lm import VllmLM
    tok = make_tokenizer("starcoder", bos=True)
    config = make_model("starcoder2", len(tok.get_vocab())).config
    return VllmLM(None, tok, config, name="tiny")


def test_one_request_per_sample_each_with_its_seed(backend):
    from codelm.backends.transformers_lm import TransformersLM  # noqa: F401  (same prompt builder)
    params = SamplingParams(max_new_tokens=16, temperature=0.8, top_p=0.95, stop=["\ndef"])
    reqs = backend.requests([backend.prompt_ids("a"), backend.prompt_ids("bb")], params, seeds=[[1, 2], [3, 4]], n=2)
    assert [kw["seed"] for _, kw in reqs] == [1, 2, 3, 4] and all(kw["n"] == 1 for _, kw in reqs)
    assert reqs[0][0] == reqs[1][0] == backend.prompt_ids("a")  # the same prompt: vLLM's prefix cache shares it
    assert reqs[0][1]["stop"] == ["\ndef"] and backend.tokenizer.eot_id in reqs[0][1]["stop_token_ids"]
    assert reqs[0][1]["temperature"] == 0.8 and reqs[0][1]["top_p"] == 0.95 and reqs[0][1]["max_tokens"] == 16


def test_fim_requests_carry_the_family_prompt_and_its_stop_tokens(backend):
    ids = backend.fim_prompt_ids("def f():\n    ", "\n")
    reqs = backend.requests([ids], SamplingParams(max_new_tokens=8), n=1, stop_ids=backend.fim_stop_ids())
    assert reqs[0][0] == ids and ids[len(backend.head)] == backend.vocab["<fim_prefix>"]
    assert backend.vocab["<file_sep>"] in reqs[0][1]["stop_token_ids"]


def test_outputs_become_completions_cut_at_stop_strings(backend):
    ids = backend.encode("return 1\ndef g():")
    c = backend.to_completion(SimpleNamespace(token_ids=ids, finish_reason="length"), SamplingParams(stop=["\ndef"]))
    assert (c.text, c.finish_reason) == ("return 1", "stop")
    c = backend.to_completion(SimpleNamespace(token_ids=ids + [backend.tokenizer.eot_id], finish_reason="stop"),
                              SamplingParams())
    assert (c.text, c.finish_reason, c.token_ids) == ("return 1\ndef g():", "eot", ids)


def test_without_vllm_the_backend_says_how_to_get_it():
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    from codelm.backends.vllm_lm import VllmLM
    from codelm.errors import ConfigError
    with pytest.raises(ConfigError, match="make vllm-env"):
        VllmLM.load("/nonexistent")


def test_real_vllm_greedy_equals_the_transformers_backend(tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not importable here: it pins its own torch/transformers and lives "
                                       "in its own environment (make vllm-env)")
    from codelm.backends.transformers_lm import TransformersLM
    from codelm.backends.vllm_lm import VllmLM
    tok = make_tokenizer(None)
    make_model("llama", len(tok.get_vocab())).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    params = SamplingParams(max_new_tokens=8)
    ours = TransformersLM.load(tmp_path, device="cpu", dtype="float32").complete(["def f(x):"], params)
    theirs = VllmLM.load(tmp_path, dtype="float32").complete(["def f(x):"], params)
    assert [c.token_ids for c in ours[0]] == [c.token_ids for c in theirs[0]]
