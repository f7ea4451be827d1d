"""The CPU fast paths (codelm/fast_paths.py): each computes what the plain model computes, and the builders apply
them (a loaded checkpoint, a trainer's model)."""

import pytest
import torch
import torch.nn.functional as F

from codelm import fast_paths
from codelm.fast_paths import apply_fast_paths, causal_attention_explicit, use_explicit_attention
from codelm.model import ModelConfig, Transformer


def micro(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, context_length=64, n_layer=2, n_head=4, d_model=32, **kw)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("options", [dict(), dict(n_kv_head=1), dict(bias=True, mlp="gelu", position="learned",
                                                                        norm="layernorm")])
@pytest.mark.parametrize("onednn", [True, False])  # oneDNN's packed weights, or the transposed-copy fallback
def test_inference_on_packed_weights_equals_the_plain_projections(options, onednn, monkeypatch):
    """fp32 inference on CPU runs the projections on packed copies of the weights (q/k/v and gate/up side by side):
    the logits are those of the plain projections, and a weight changed in place (an optimizer step, loading a
    checkpoint) is seen at once, not a stale copy. A model that has run inference can still be copied."""
    import copy

    if onednn and not fast_paths.ONEDNN:
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(fast_paths, "ONEDNN", onednn)
    model = apply_fast_paths(micro(**options))
    x = torch.randint(0, 128, (1, 5))

    def both():
        with torch.no_grad():
            fast = model(x)
        with torch.enable_grad():
            plain = model(x).detach()  # autograd on: the plain F.linear path
        return fast, plain

    fast, plain = both()
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    fast2, plain2 = both()
    assert not torch.allclose(plain2, plain, atol=1e-3)
    torch.testing.assert_close(fast2, plain2, rtol=1e-5, atol=1e-5)
    model.load_state_dict(micro(**options).state_dict())  # back to the first weights, copied in place
    fast3, _ = both()
    torch.testing.assert_close(fast3, plain, rtol=1e-5, atol=1e-5)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), fast3)
    long = torch.randint(0, 128, (3, 40))  # many rows (a prefill) take the packed path too
    with torch.enable_grad():
        plain_long = model(long).detach()
    with torch.no_grad():
        torch.testing.assert_close(model(long), plain_long, rtol=1e-5, atol=1e-5)


# ---- the CPU attention path for training ----
def _qkv(dtype, B=2, H=3, T=40, D=16):
    torch.manual_seed(0)
    return [torch.randn(B, H, T, D).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("chunk_elements", [1 << 21, 2 * 40 * 40])  # all heads at once; two (then one) at a time
@pytest.mark.parametrize("scale", [None, 1 / 16])  # SDPA's default, µP's 1/d
def test_explicit_attention_is_causal_sdpa(monkeypatch, chunk_elements, scale):
    monkeypatch.setattr(fast_paths, "SCORE_CHUNK_ELEMENTS", chunk_elements)
    q, k, v = _qkv(torch.float32)
    go = torch.randn_like(q)
    ours = causal_attention_explicit(q, k, v, scale)
    grads = torch.autograd.grad(ours, (q, k, v), go)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    ref_grads = torch.autograd.grad(ref, (q, k, v), go)
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_explicit_attention_in_bf16_is_within_bf16_rounding_of_the_exact_result():
    q, k, v = _qkv(torch.bfloat16)
    exact = F.scaled_dot_product_attention(*(t.detach().double() for t in (q, k, v)), is_causal=True)
    ours = causal_attention_explicit(q, k, v, None).detach().double()
    assert float((ours - exact).norm() / exact.norm()) < 0.02  # a few bf16 roundings (2^-9 each)


def test_bf16_on_cpu_takes_the_explicit_path_and_fp32_or_long_contexts_do_not():
    q = torch.zeros(1, 2, 256, 8, dtype=torch.bfloat16)
    assert use_explicit_attention(q)
    assert not use_explicit_attention(q.float())  # fp32: SDPA is as fast, and exact
    assert not use_explicit_attention(torch.zeros(1, 2, 4096, 8, dtype=torch.bfloat16))  # long: flash wins


def test_a_loaded_checkpoint_has_the_fast_paths_and_saves_as_the_plain_model(tmp_path, tokenizer):
    """Serving and evaluation load checkpoints: the loader applies the fast paths, and the swap keeps every
    parameter name, so what it saves again is the plain model's state dict."""
    from codelm.checkpoint import save_checkpoint
    from codelm.loader import load_checkpoint

    torch.manual_seed(0)
    plain = Transformer(ModelConfig(vocab_size=16448, context_length=32, n_layer=1, n_head=2, d_model=32)).eval()
    ck = load_checkpoint(save_checkpoint(tmp_path / "ck", plain, tokenizer))
    assert isinstance(ck.model.layers[0].attn, fast_paths.FastAttention)
    assert isinstance(ck.model.lm_head, fast_paths.PackedLinear)
    assert list(ck.model.state_dict()) == list(plain.state_dict())
    assert ck.model.lm_head.weight is ck.model.embed.weight  # still tied
    x = torch.randint(0, 16000, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), plain(x), rtol=1e-5, atol=1e-5)
    assert apply_fast_paths(ck.model) is ck.model  # idempotent
