"""Compiled decoding (codelm/compiled.py): the static-cache pass computes what the eager pass computes, compiled
decoding gives the same tokens and streams, and after warm-up nothing recompiles and nothing falls back to eager."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from codelm.compiled import capacity_bucket, compile_decoding, row_bucket, token_bucket, uncompiled
from codelm.fast_paths import apply_fast_paths
from codelm.generate import SamplingParams, decode_batch
from codelm.model import ModelConfig, Transformer
from test_infill import FUNCTIONS, HELD_OUT, infill_model, split_at_line  # noqa: F401 (a fixture)


# inductor compiles the steps it writes with the machine's C++ compiler
needs_compiler = pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                                    reason="no C++ compiler for torch.compile's CPU backend")


def micro(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, context_length=64, n_layer=2, n_head=4, d_model=32, **kw)
    return Transformer(cfg).eval()


def test_buckets():
    assert [capacity_bucket(n) for n in (1, 128, 129, 600)] == [128, 128, 256, 1024]
    assert [row_bucket(n) for n in (1, 2, 3, 5, 8, 9, 64, 65)] == [1, 2, 4, 8, 8, 16, 64, 128]
    assert [token_bucket(t) for t in (1, 2, 5, 8, 9, 16, 17, 100)] == [1, 8, 8, 8, 16, 16, 32, 128]


@pytest.mark.parametrize("options", [{}, {"n_kv_head": 2}, {"position": "alibi"},
                                     {"position": "learned", "norm": "layernorm", "mlp": "gelu", "bias": True}])
def test_static_pass_equals_the_eager_pass(options):
    """forward_static (tokens at tensor slots, attending over the whole cache through a mask) gives the logits of
    the eager cached pass: a left-padded prefill, decoding steps and a draft of several tokens."""
    model = micro(**options)
    ids = torch.randint(0, 128, (2, 12))
    key_padding = torch.ones(2, 40, dtype=torch.bool)
    key_padding[1, :3] = False  # row 1 is left-padded
    positions = (key_padding[:, :12].long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        model.setup_cache(2, 40)
        eager = [model(ids[:, :8], positions[:, :8], key_padding[:, :8]),
                 model(ids[:, 8:9], positions[:, 8:9], key_padding[:, :9]),
                 model(ids[:, 9:12], positions[:, 9:12], key_padding[:, :12])]
        model.setup_cache(2, 40)
        static, start = [], 0
        for a, b in ((0, 8), (8, 9), (9, 12)):
            slots = torch.arange(start + 0, start + b - a)
            static.append(model.forward_static(ids[:, a:b], positions[:, a:b], slots, key_padding))
            start += b - a
            model.set_cache_length(start)
    for e, s in zip(eager, static):
        torch.testing.assert_close(s, e, rtol=1e-5, atol=1e-5)


def test_the_static_cache_is_bucketed_and_keeps_the_cache_api():
    """Rows padded to a bucket and the capacity fixed, invisibly to callers: selecting rows, reading them back and
    the length bookkeeping behave as on the eager model (eager passes: nothing is compiled here)."""
    model = compile_decoding(micro())
    model.setup_cache(3, 20)
    assert (model.layers[0].attn.cache.k.shape[0], model.cache_capacity) == (4, 128)
    model.select_cache_rows(torch.tensor([0, 2]))
    assert model.layers[0].attn.cache.k.shape[0] == 2
    assert uncompiled(model).__class__ is Transformer and not model.has_cache


def _decode(model, tokenizer, prompts, params):
    rows = [[tokenizer.l2r_id] + tokenizer.encode(p) for p in prompts]
    events = []
    out = decode_batch(model, tokenizer, rows, params, [None] * len(rows), on_token=events.append)
    return [c for per in out for c in per], [(e.prompt, e.sample, e.token_id, e.text, e.finished) for e in events]


def _compare(eager, compiled, tokenizer, prompts, params):
    want, want_events = _decode(eager, tokenizer, prompts, params)
    got, got_events = _decode(compiled, tokenizer, prompts, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert [(c.text, c.finish_reason, c.passes) for c in got] == [(c.text, c.finish_reason, c.passes) for c in want]
    assert got_events == want_events
    for a, b in zip(got, want):
        assert max((abs(x - y) for x, y in zip(a.logprobs, b.logprobs)), default=0.0) < 1e-5


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=16448, n_layer=2, n_head=2, d_model=64, context_length=96)
    eager = apply_fast_paths(Transformer(cfg)).eval()
    return eager, compile_decoding(copy.deepcopy(eager))


def _graphs() -> int:
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def _no_recompiles_and_no_graph_breaks(run):
    """Run `run` with dynamo told to fail on a recompile; returns the graphs compiled during it (must be 0)."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        run()
    assert dict(counters["graph_break"]) == {}
    return counters["stats"]["unique_graphs"] - before


def _passes(model, widths, seed):
    """Cached passes of these widths over one random row on a fresh 128-slot cache; their logits."""
    ids = torch.randint(0, 128, (1, sum(widths)), generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    with torch.no_grad():
        model.setup_cache(1, 128)
        for w in widths:
            out.append(model(ids[:, start:start + w]))
            start += w
    return out


@needs_compiler
def test_passes_that_fill_the_cache_exactly_compile_no_graph_of_their_own():
    """A pass whose bucket ends at the cache's last slot (a 100-token prompt's 128-token prefill bucket in a
    128-slot cache, a draft bucket or a step ending there) once made dynamo specialise the number of keys to the
    capacity: an error, later a graph of its own. Now one graph per bucket serves every start, logits as eager."""
    torch.manual_seed(0)
    eager = Transformer(ModelConfig(vocab_size=128, context_length=128, n_layer=2, n_head=4, d_model=32)).eval()
    compiled = compile_decoding(copy.deepcopy(eager))
    first = [100] + [1] * 20 + [8]            # the prefill and the 8-token bucket each end at slot 128
    second = [110, 5] + [1] * 13              # other starts; the last step sees all 128 slots
    before = _graphs()
    for want, got in zip(_passes(eager, first, 0), _passes(compiled, first, 0)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert _graphs() - before == 3  # the prefill, draft and one-token buckets

    def again():
        for want, got in zip(_passes(eager, second, 1), _passes(compiled, second, 1)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert _no_recompiles_and_no_graph_breaks(again) == 0


@needs_compiler
def test_compiled_greedy_decoding_equals_eager_and_does_not_recompile(pair, tokenizer):
    """One row, greedy, with prompt-lookup drafts (compiles a prefill bucket and the draft-verification bucket):
    the same tokens, passes and stream as eager decoding, log-probabilities within 1e-5; then other prompts of
    the same buckets run with recompiling made an error, and no graph breaks anywhere."""
    eager, compiled = pair
    drafts, single = (SamplingParams(max_new_tokens=24, lookup_draft=k, stop=["\n\n"]) for k in (4, 0))
    before = _graphs()
    for params in (drafts, single):
        _compare(eager, compiled, tokenizer, ["def add(a, b):\n    return a"], params)
    assert _graphs() - before == 3  # the prefill, draft and one-token buckets

    def again():
        for params in (drafts, single):
            _compare(eager, compiled, tokenizer, ["y = [1, 2]\nz = y"], params)
    assert _no_recompiles_and_no_graph_breaks(again) == 0


@pytest.mark.slow
@needs_compiler
def test_compiled_batches_samples_and_changing_rows_equal_eager(pair, tokenizer):
    """Padded prompts, n samples per prompt, rows leaving as they finish (row buckets 8, 4, 2, 1), sampling with
    seeds: all as eager; a second batch of other prompts compiles nothing new."""
    eager, compiled = pair
    prompts = ["def add(a, b):\n    return", "import os\n\nclass Config:\n    def __init__(self):", "x = [1, 2"]
    greedy = SamplingParams(max_new_tokens=16, lookup_draft=0, stop=[")"])
    _compare(eager, compiled, tokenizer, prompts, greedy)
    assert _no_recompiles_and_no_graph_breaks(lambda: _compare(
        eager, compiled, tokenizer, ["def sub(a, b):\n    return", "import sys\n\nclass Base:\n    def run(self):", "y = [3, 4"], greedy)) == 0


def test_compile_setting_resolves_and_reaches_the_commands():
    """--compile on/off/auto: auto on a CPU model is on only for a decode long enough to repay compiling (an
    evaluation of many samples), not for one prompt; the sample, infill, eval and serve options all carry it."""
    import dataclasses

    from codelm.cli import InfillConfig, SampleConfig
    from codelm.compiled import use_compile
    from codelm.errors import ConfigError
    from evals.cli import EvalConfig
    from web.config import ServeConfig

    model = micro()
    assert (use_compile("auto", model), use_compile("on", model), use_compile("off", model)) == (False, True, False)
    assert use_compile("auto", model, planned_tokens=164 * 512 * 10) and not use_compile("auto", model, 128)
    with pytest.raises(ConfigError):
        use_compile("yes", model)
    for cfg in (SampleConfig, InfillConfig, EvalConfig, ServeConfig):
        assert {f.name: f.default for f in dataclasses.fields(cfg)}["compile"] == "auto"


@pytest.mark.slow
@needs_compiler
def test_compiled_meet_in_the_middle_equals_eager(infill_model):
    """Meet-in-the-middle (two directions in one batch, candidates verified in one pass, rows at different
    lengths) on a model trained to meet: the same middles, joins and passes compiled as eager."""
    from codelm.generate import SamplingParams
    from codelm.infill import mim_infill

    ck = infill_model
    compiled = compile_decoding(copy.deepcopy(ck.model))
    params = SamplingParams(max_new_tokens=32)
    before = _graphs()
    for f, line in HELD_OUT[:2]:
        prefix, middle, suffix = split_at_line(FUNCTIONS[f], line)
        want = mim_infill(ck.model, ck.tokenizer, prefix, suffix, params, capabilities=ck.capabilities)
        got = mim_infill(compiled, ck.tokenizer, prefix, suffix, params, capabilities=ck.capabilities)
        assert (got.text, got.met, got.steps) == (want.text, want.met, want.steps) and want.text == middle
    assert _graphs() > before  # it did decode compiled


@pytest.mark.slow
@needs_compiler
def test_the_servers_worker_decodes_the_same_compiled(tokenizer):
    """The server's worker on a compiled model: rows joining and leaving a running batch (row buckets change, the
    cache is rebuilt right-aligned) generate what eager decoding of each prompt alone generates."""
    import threading

    from codelm.generate import generate
    from web.engine import Engine, Job, RowSpec

    torch.manual_seed(0)
    eager = Transformer(ModelConfig(vocab_size=16448, n_layer=2, n_head=2, d_model=64, context_length=96)).eval()
    prompts = ["def add(a, b):", "import os\nimport sys\n\nclass Foo(object):", "x = 1"]
    params = [SamplingParams(max_new_tokens=10 + 6 * k) for k in range(len(prompts))]
    alone = [generate(eager, tokenizer, p, sp) for p, sp in zip(prompts, params)]
    before = _graphs()
    engine = Engine(compile_decoding(copy.deepcopy(eager)), tokenizer, max_batch=3).start()
    try:
        texts, done = [""] * len(prompts), [threading.Event() for _ in prompts]

        def sink(k):
            def take(event):
                texts[k] += event.text
                if event.finish_reason:
                    done[k].set()
            return take
        for k, (prompt, sp) in enumerate(zip(prompts, params)):
            engine.submit(Job([RowSpec([tokenizer.l2r_id] + tokenizer.encode(prompt), sp)], sink(k)))
        assert all(d.wait(900) for d in done)
        assert texts == alone and _graphs() > before
    finally:
        engine.stop()


@pytest.mark.slow
@needs_compiler
def test_compiled_batched_meet_in_the_middle_equals_eager():
    """Meet-in-the-middle for several problems as one batch (six rows, rows leaving as problems end, each row
    verifying a candidate of its own length, the infill_batch entry point): the same middles, joins and passes
    compiled as eager, log-probabilities as close as a batch's."""
    from support import wandering_model
    from test_infill import PROBLEMS, same_results

    from codelm.infill import infill_batch, mim_infill_batch

    model, tok, caps = wandering_model()
    compiled = compile_decoding(copy.deepcopy(model))
    params = SamplingParams(max_new_tokens=12, stop=["e"])
    prefixes, suffixes = [p for p, _ in PROBLEMS[:3]], [s for _, s in PROBLEMS[:3]]
    before = _graphs()
    assert same_results(mim_infill_batch(compiled, tok, prefixes, suffixes, params),
                        mim_infill_batch(model, tok, prefixes, suffixes, params))
    assert _graphs() > before  # it did decode compiled
    got, want = (infill_batch(m, tok, prefixes, suffixes, "mim", params, capabilities=caps) for m in (compiled, model))
    assert [[c.token_ids for c in per] for per in got] == [[c.token_ids for c in per] for per in want]
