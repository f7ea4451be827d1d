"""Decoding speed: codelm.generate against Hugging Face transformers' `generate` on the same weights, in one run.

    python benchmarks/bench_generate.py [--preset tiny | --checkpoint RUN] [--prompt-len 256] [--new-tokens 128]
                                        [--batch 1 8] [--lookup-draft 4]

A codelm model (random weights by default, or a trained checkpoint with --checkpoint) is copied into a
`transformers.LlamaForCausalLM` with a matching config (the default block maps one-to-one onto Llama), the logits are
checked to agree, and both decode the same prompts (cut from real code) greedily for exactly --new-tokens tokens.
Runs alternate between the implementations and the median is reported, so all see the same machine load; the ratio
is the number to quote, not the absolute tokens/s (these machines are shared). The ratio of thread CPU times is
printed beside it: it ignores the time a run waits for a core, so it moves less when other work shares the machine.
Greedy outputs are compared too: the same weights must give the same tokens.

Columns at batch 1: codelm as users get it (prompt-lookup drafts, the default), codelm one token per pass
(`lookup_draft=0`), HF's default greedy search and HF with its own prompt lookup (`prompt_lookup_num_tokens`, batch 1
only in transformers). How much prompt lookup gains depends on how often the text repeats itself, so the tokens per
pass are printed: random weights and small trained models repeat more than a strong model does.

Compiled decoding (codelm/compiled.py, `--compile on`) has its own rows ("compiled"), on a copy of the model; the
time compiling its buckets took (the first, warm-up run) is printed, and the compiled rows must give the eager rows'
tokens. `--no-compile` leaves them out.

A llama.cpp column (llama-cpp-python on the model exported with `codelm export --gguf`, f32, the same threads) is
added when llama-cpp-python is installed (.ci/llama_setup.sh builds it): greedy through its own sampler, one
sequence; at batch > 1 through its low-level batch API (`LlamaCppBatch`: every sequence's newest token in one
`llama_decode` per step, greedy by argmax), since the `Llama` class decodes one sequence. The CPU model, torch's BLAS and kernel level and llama.cpp's kernels are printed, because the ratios
differ between machines.
Needs the optional `hf` extra (`pip install transformers`).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from codelm.compiled import compile_decoding
from codelm.generate import SamplingParams, decode_batch
from codelm.fast_paths import apply_fast_paths
from codelm.model import Transformer, preset_config
from codelm.tokenizer import get_tokenizer


def to_hf_llama(model: Transformer):
    """A transformers LlamaForCausalLM with the codelm model's weights (names map one-to-one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden,
                         num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                         head_dim=c.head_dim, max_position_embeddings=c.context_length, rms_norm_eps=c.norm_eps,
                         rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings, attention_bias=False,
                         mlp_bias=False, hidden_act="silu", bos_token_id=None, eos_token_id=None, pad_token_id=0)
    hf = LlamaForCausalLM(hf_cfg)
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    per_layer = {"attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj",
                 "attn.wo": "self_attn.o_proj", "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
                 "mlp.w_gate": "mlp.gate_proj", "mlp.w_up": "mlp.up_proj", "mlp.w_down": "mlp.down_proj"}
    state = {}
    for key, value in model.state_dict().items():
        if key in names:
            state[names[key]] = value
            continue
        _, i, rest = key.split(".", 2)
        module, _, param = rest.rpartition(".")
        state[f"model.layers.{i}.{per_layer[module]}.{param}"] = value
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary" not in m and not (c.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def prompts_from_code(tokenizer, batch: int, length: int) -> list[list[int]]:
    """`batch` prompts of exactly `length` tokens cut from real code (the stdlib corpus)."""
    from codelm.data.sources import stdlib_documents

    out = []
    for doc in stdlib_documents():
        ids = tokenizer.encode(doc.text)
        if len(ids) >= length:
            out.append(ids[:length - 1])
        if len(out) == batch:
            return out
    raise RuntimeError("not enough long documents for the prompts")


def timed(fn):
    """(wall seconds, this thread's CPU seconds, result). CPU time is what a run costs when other processes share
    the cores (it does not count the time spent waiting for one); both implementations run on this thread."""
    wall, cpu = time.perf_counter(), time.thread_time()
    result = fn()
    return time.perf_counter() - wall, time.thread_time() - cpu, result


def count_passes(model) -> list[int]:
    """A counter of the model's forward passes (prefill included), for tokens per pass."""
    counter = [0]
    model.register_forward_pre_hook(lambda module, args: counter.__setitem__(0, counter[0] + 1))
    return counter


def run_ours(model, tokenizer, prompts, new_tokens, lookup_draft):
    rows = [[tokenizer.l2r_id] + p for p in prompts]
    params = SamplingParams(max_new_tokens=new_tokens, lookup_draft=lookup_draft)
    wall, cpu, out = timed(lambda: decode_batch(model, tokenizer, rows, params, [None] * len(rows)))
    return wall, cpu, [c[0].token_ids for c in out]


def run_hf(hf, tokenizer, prompts, new_tokens, lookup_draft=0):
    ids = torch.tensor([[tokenizer.l2r_id] + p for p in prompts])
    extra = {"prompt_lookup_num_tokens": lookup_draft} if lookup_draft else {}
    wall, cpu, out = timed(lambda: hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                               min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                               pad_token_id=0, **extra))
    return wall, cpu, [row[ids.shape[1]:].tolist() for row in out]


def llama_cpp_model(model, tokenizer, threads: int, context: int, workdir: Path):
    """llama-cpp-python on the model exported to GGUF (f32), or None (with the reason printed) when it is missing."""
    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp: not benchmarked (llama-cpp-python is not installed; .ci/llama_setup.sh builds it)")
        return None
    from codelm.checkpoint import save_checkpoint
    from codelm.gguf import export_gguf

    path = export_gguf(save_checkpoint(workdir / "ckpt", model.float(), tokenizer), workdir / "model.gguf", "f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_batch=context, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    kernels = " ".join(k.strip() for k in llama_cpp.llama_print_system_info().decode().split("|")
                       if k.strip().endswith("= 1"))
    print(f"llama.cpp (llama-cpp-python {llama_cpp.__version__}), f32 GGUF, {threads} threads: {kernels}")
    return llm


def run_llama_cpp(llm, tokenizer, prompts, new_tokens):
    """Greedy with llama.cpp's sampler (top-k 1), exactly new_tokens tokens (end-of-text ignored, as for HF)."""
    def go():
        out = []
        for p in prompts:
            row = []
            llm.reset()  # the whole prompt is evaluated each time (generate() would reuse a cached prefix)
            for t in llm.generate([tokenizer.l2r_id] + p, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                row.append(t)
                if len(row) == new_tokens:
                    break
            out.append(row)
        return out
    return timed(go)


def where_time_goes(model, tokenizer, prompts, new_tokens, label, top: int = 6):
    """Where a one-token-per-pass decode spends its CPU time (torch's profiler, self time per op), printed when
    llama.cpp is ahead: the matmuls (oneDNN/BLAS: the weights streamed once per step) against the rest."""
    from torch.profiler import profile

    with profile() as prof:
        run_ours(model, tokenizer, prompts, new_tokens, 0)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    linear = sum(e.self_cpu_time_total for e in events
                 if any(k in e.key for k in ("linear", "addmm", "aten::mm", "matmul", "bmm")))
    print(f"      llama.cpp is ahead of '{label}': its CPU time by op (profiled; {linear / total:.0%} in matmuls):")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"        {e.self_cpu_time_total / total:6.1%}  {e.key[:70]}")


class LlamaCppBatch:
    """Several sequences decoded together by llama.cpp (its low-level batch API: one `llama_decode` per step over
    every sequence's newest token, each sequence its own id in the KV cache), on the weights `llm` loaded, greedy
    (argmax of each sequence's logits, as its sampler at top-k 1)."""

    def __init__(self, llm, rows: int, slots_per_row: int, threads: int):
        import llama_cpp

        self.lib, self.llm = llama_cpp, llm
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = rows * -(-slots_per_row // 256) * 256  # llama.cpp rounds a sequence's share to 256
        params.n_batch = params.n_ubatch = params.n_ctx
        params.n_seq_max = rows
        params.n_threads = params.n_threads_batch = threads
        self.ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp: could not make a context for the batch")
        self.batch = llama_cpp.llama_batch_init(params.n_ctx, 0, rows)
        self.n_vocab = llm.n_vocab()

    def _decode(self, entries):
        """entries: (token, position, sequence, wants logits); returns {sequence: next token} for those wanting."""
        import numpy as np

        b = self.batch
        for k, (tok, pos, seq, out) in enumerate(entries):
            b.token[k], b.pos[k], b.n_seq_id[k], b.logits[k] = tok, pos, 1, out
            b.seq_id[k][0] = seq
        b.n_tokens = len(entries)
        if self.lib.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama.cpp: llama_decode failed")
        nxt = {}
        for k, (_, _, seq, out) in enumerate(entries):
            if out:
                logits = np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, k), shape=(self.n_vocab,))
                nxt[seq] = int(logits.argmax())
        return nxt

    def generate(self, rows, new_tokens):
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        nxt = self._decode([(t, i, s, i == len(r) - 1) for s, r in enumerate(rows) for i, t in enumerate(r)])
        out = [[nxt[s]] for s in range(len(rows))]
        for step in range(1, new_tokens):
            nxt = self._decode([(out[s][-1], len(r) + step - 1, s, True) for s, r in enumerate(rows)])
            for s in range(len(rows)):
                out[s].append(nxt[s])
        return out


def run_llama_cpp_batch(batcher, tokenizer, prompts, new_tokens):
    return timed(lambda: batcher.generate([[tokenizer.l2r_id] + p for p in prompts], new_tokens))


def describe_machine() -> str:
    """The CPU model and the kernels torch runs on (BLAS library, ISA level)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    config = torch.__config__.show()
    blas = next((part.split("=", 1)[1] for line in config.splitlines() for part in line.replace(",", " ").split()
                 if part.startswith("BLAS_INFO=")), "unknown")
    return (f"CPU: {cpu}; torch BLAS {blas}, kernels {torch.backends.cpu.get_cpu_capability()}, "
            f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}")


def load_model(args):
    """(model, tokenizer, label): a trained checkpoint, or a preset with random weights."""
    if args.checkpoint:
        from codelm.loader import load_checkpoint
        ckpt = load_checkpoint(args.checkpoint)
        if ckpt.config.context_length < args.prompt_len + args.new_tokens + 1:
            raise SystemExit(f"{args.checkpoint}: context {ckpt.config.context_length} is shorter than --prompt-len "
                             f"+ --new-tokens + 1 = {args.prompt_len + args.new_tokens + 1}")
        return ckpt.model, ckpt.tokenizer, f"checkpoint {ckpt.path.name}"
    cfg = preset_config(args.preset, context_length=max(512, args.prompt_len + args.new_tokens + 1))
    return apply_fast_paths(Transformer(cfg)).eval(), get_tokenizer(cfg.tokenizer), f"{args.preset}, random weights"


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    ap.add_argument("--prompt-len", type=int, default=256, help="prompt tokens (default 256)")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens to generate (default 128)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (default 3)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="weights and activations of both models (default float32; bfloat16 halves the bytes a "
                         "decode step streams, which bounds batch-1 speed on CPU)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, oversubscribed threads make timings noise)")
    ap.add_argument("--checkpoint", default=None, help="a trained checkpoint or run directory instead of --preset")
    ap.add_argument("--lookup-draft", type=int, default=SamplingParams().lookup_draft,
                    help="prompt-lookup draft tokens per pass for codelm and for HF's prompt-lookup column "
                         f"(default {SamplingParams().lookup_draft}, codelm's default)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled-decoding rows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    torch.manual_seed(0)
    model, tokenizer, label = load_model(args)
    hf = to_hf_llama(model)
    print(describe_machine())
    workdir = tempfile.TemporaryDirectory(prefix="bench-gguf-")
    llm = None
    if args.dtype == "float32":  # the GGUF column is f32 (llama.cpp's bf16 CPU path is another comparison)
        llm = llama_cpp_model(model, tokenizer, torch.get_num_threads(), model.config.context_length,
                              Path(workdir.name))
    dtype = getattr(torch, args.dtype)
    model, hf = model.to(dtype), hf.to(dtype)
    compiled = None if args.no_compile else compile_decoding(copy.deepcopy(model))
    passes = count_passes(model)
    compiled_passes = count_passes(compiled) if compiled is not None else None
    probe = torch.randint(0, tokenizer.n_vocab, (2, 64))
    diff = (model(probe).float() - hf(probe).logits.float()).abs().max().item()
    print(f"codelm {label} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params) vs transformers "
          f"{transformers.__version__} LlamaForCausalLM, same weights: max |logit diff| {diff:.2e}")
    print(f"torch {torch.__version__}, {args.dtype}, {torch.get_num_threads()} threads, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy, prompt-lookup drafts of {args.lookup_draft}; median of "
          f"{args.repeats} alternating runs (shared machine)")
    print(f"{'batch':>5s} {'implementation':<24s} {'tok/s':>8s} {'vs HF':>6s} {'(CPU time)':>10s} {'tok/pass':>8s}"
          f"  same tokens")
    for batch in args.batch:
        prompts = prompts_from_code(tokenizer, batch, args.prompt_len)
        variants = {"codelm": lambda: run_ours(model, tokenizer, prompts, args.new_tokens, args.lookup_draft),
                    "codelm, one token/pass": lambda: run_ours(model, tokenizer, prompts, args.new_tokens, 0),
                    "HF generate": lambda: run_hf(hf, tokenizer, prompts, args.new_tokens)}
        if batch == 1 and args.lookup_draft:
            variants["HF + prompt lookup"] = lambda: run_hf(hf, tokenizer, prompts, args.new_tokens,
                                                            args.lookup_draft)
        if compiled is not None:
            variants["compiled"] = lambda: run_ours(compiled, tokenizer, prompts, args.new_tokens, args.lookup_draft)
            variants["compiled, one token/pass"] = lambda: run_ours(compiled, tokenizer, prompts, args.new_tokens, 0)
        if batch > 1 or not args.lookup_draft:  # codelm drafts for one row only: the two codelm rows are one
            del variants["codelm, one token/pass"]
            variants.pop("compiled, one token/pass", None)
        if llm is not None and batch == 1:
            variants["llama.cpp"] = lambda: run_llama_cpp(llm, tokenizer, prompts, args.new_tokens)
        elif llm is not None:
            batcher = LlamaCppBatch(llm, batch, args.prompt_len + args.new_tokens + 8, torch.get_num_threads())
            variants["llama.cpp"] = lambda: run_llama_cpp_batch(batcher, tokenizer, prompts, args.new_tokens)
        runs = {name: [] for name in variants}
        tokens, per_pass = {}, {}
        for name, fn in variants.items():
            wall, _, _ = fn()  # warm up (compiles the compiled rows' buckets)
            if name.startswith("compiled"):
                print(f"{batch:>5d} {name}: warm-up run (compiling its buckets) {wall:.1f} s", flush=True)
        for _ in range(args.repeats):
            for name, fn in variants.items():
                counter = compiled_passes if name.startswith("compiled") else passes
                before = counter[0]
                *t, tokens[name] = fn()
                runs[name].append(t)
                if name.startswith(("codelm", "compiled")):
                    per_pass[name] = sum(len(x) for x in tokens[name]) / max(1, counter[0] - before) / batch
        reference = tokens["HF generate"]
        hf_wall = statistics.median(t[0] for t in runs["HF generate"])
        hf_cpu = statistics.median(t[1] for t in runs["HF generate"])
        n_ref = sum(len(t) for t in reference)
        for name in variants:
            n = sum(len(t) for t in tokens[name])
            wall = statistics.median(t[0] for t in runs[name])
            cpu = statistics.median(t[1] for t in runs[name])
            same = all(a == b[:len(a)] for a, b in zip(tokens[name], reference))
            if name.startswith("compiled"):  # compiled decoding must reproduce eager codelm exactly
                same = same and tokens[name] == tokens["codelm"]
            tpp = f"{per_pass[name]:8.2f}" if name in per_pass else f"{'':8s}"
            print(f"{batch:>5d} {name:<24s} {n / wall:>8.1f} {(n / wall) / (n_ref / hf_wall):>5.2f}x "
                  f"{(n / cpu) / (n_ref / hf_cpu):>9.2f}x {tpp}  {same}")
        if "llama.cpp" in variants:
            rate = {name: (sum(len(t) for t in tokens[name]) / statistics.median(t[0] for t in runs[name]),
                           sum(len(t) for t in tokens[name]) / statistics.median(t[1] for t in runs[name]))
                    for name in variants}
            for name in [n for n in variants if n.startswith(("codelm", "compiled"))]:
                print(f"{batch:>5d} {name} / llama.cpp: {rate[name][0] / rate['llama.cpp'][0]:.2f}x "
                      f"(CPU time {rate[name][1] / rate['llama.cpp'][1]:.2f}x)")
            one = next(n for n in ("compiled, one token/pass", "compiled", "codelm, one token/pass", "codelm")
                       if n in rate and (batch > 1 or not args.lookup_draft or "one token" in n))
            if rate[one][1] < rate["llama.cpp"][1]:
                where_time_goes(compiled if one.startswith("compiled") else model, tokenizer, prompts,
                                args.new_tokens, one)


if __name__ == "__main__":
    main()
