"""Architecture options from the seed papers: each is one ModelConfig field, and the default stays the Llama block."""

import math

import pytest
import torch
import torch.nn.functional as F

from codelm.model import ModelConfig, Transformer, alibi_slopes, count_parameters, optimizer_groups

OPTIONS = {
    "llama": {},
    "gpt2": dict(norm="layernorm", mlp="gelu", position="learned", bias=True),
    "alibi": dict(position="alibi"),
    "alibi-mqa": dict(position="alibi", n_kv_head=1),
    "mup": dict(mup=True, mup_base_width=16, mup_embedding_mult=3.0, mup_output_mult=2.0),
    "llama-bias-gqa": dict(bias=True, n_kv_head=2),
}


def micro(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=128, context_length=64, n_layer=2, n_head=4, d_model=32), **kw})
    model = Transformer(cfg).eval()
    if cfg.bias:  # biases start at zero; make them matter so the tests can see them
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
    return model


def test_defaults_are_the_llama_block_and_old_configs_still_load():
    cfg = ModelConfig()
    assert (cfg.norm, cfg.mlp, cfg.position, cfg.bias, cfg.mup) == ("rmsnorm", "swiglu", "rope", False, False)
    assert cfg.is_llama
    # a config saved before these fields existed
    old = dict(vocab_size=128, context_length=64, n_layer=2, n_head=4, n_kv_head=4, d_model=32, ffn_hidden=128,
               ffn_multiple_of=64, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, init_std=0.02,
               tokenizer="cl100k_base:16384")
    assert ModelConfig.from_dict(old) == ModelConfig(**old)
    names = set(Transformer(ModelConfig.from_dict(old)).state_dict())
    assert not any("bias" in n or "pos_embed" in n for n in names)
    assert "layers.0.mlp.w_gate.weight" in names


@pytest.mark.parametrize("field,value", [("norm", "batchnorm"), ("mlp", "relu"), ("position", "sinusoidal")])
def test_unknown_option_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{field: value})


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_is_causal(name):
    """Changing token t never changes the logits before t."""
    model = micro(**OPTIONS[name])
    x = torch.randint(0, 128, (2, 20))
    base = model(x)
    assert base.shape == (2, 20, 128) and base.dtype == torch.float32
    for t in (0, 11, 19):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % 128
        out = model(x2)
        torch.testing.assert_close(out[:, :t], base[:, :t])
        assert not torch.allclose(out[:, t:], base[:, t:])


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_decodes_with_the_kv_cache(name):
    model = micro(**OPTIONS[name])
    x = torch.randint(0, 128, (3, 24))
    full = model(x)
    model.setup_cache(3, 64)
    pieces = [model(x[:, :10])] + [model(x[:, t:t + 1]) for t in range(10, 24)]
    model.clear_cache()
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "alibi"])
def test_left_padded_batch_with_cache_matches_unpadded_rows(name):
    """Left padding with per-row positions, then a cached decoding step: every row matches its unpadded self."""
    model = micro(**OPTIONS[name])
    a, b = torch.randint(0, 128, (1, 12)), torch.randint(0, 128, (1, 7))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], dim=1)])
    keys = torch.ones(2, 16, dtype=torch.bool)
    keys[1, :5] = False
    positions = torch.stack([torch.arange(12), torch.clamp(torch.arange(12) - 5, min=0)])
    model.setup_cache(2, 64)
    out = model(batch, positions=positions, key_padding=keys[:, :12])
    nxt = torch.tensor([[3], [4]])
    step = model(nxt, positions=torch.tensor([[12], [7]]), key_padding=keys[:, :13])
    model.clear_cache()
    torch.testing.assert_close(out[0], model(a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 5:], model(b)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[0, 0], model(torch.cat([a, nxt[:1]], 1))[0, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step[1, 0], model(torch.cat([b, nxt[1:]], 1))[0, -1], atol=1e-5, rtol=1e-5)


def test_gpt2_options_build_gpt2_modules():
    model = micro(**OPTIONS["gpt2"])
    block = model.layers[0]
    assert isinstance(block.attn_norm, torch.nn.LayerNorm) and block.attn_norm.bias is not None
    assert not hasattr(block.mlp, "w_gate") and block.mlp.w_up.out_features == 4 * 32  # GPT-2's 4x MLP
    assert block.attn.wq.bias is not None and model.lm_head.bias is None
    assert model.pos_embed.weight.shape == (64, 32)
    assert not hasattr(model, "rope_cos")
    # position embeddings are a lookup table: excluded from non-embedding parameters and from matmul FLOPs
    assert count_parameters(model) - count_parameters(model, non_embedding=True) == (128 + 64) * 32


def test_learned_positions_are_absolute_and_alibi_is_relative():
    """Shifting every position by 5 changes nothing for ALiBi (it sees only distances), but does for learned
    position embeddings."""
    x = torch.randint(0, 128, (2, 16))
    shifted = torch.arange(5, 21)
    alibi = micro(position="alibi")
    torch.testing.assert_close(alibi(x, positions=shifted), alibi(x), atol=1e-5, rtol=1e-5)
    learned = micro(position="learned")
    assert not torch.allclose(learned(x, positions=shifted), learned(x), atol=1e-4)


def test_alibi_slopes_follow_the_paper():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # not a power of two: the 4-head slopes, then every other slope of the 8-head sequence
    six = alibi_slopes(6)
    assert torch.allclose(six[:4], alibi_slopes(4)) and torch.allclose(six[4:], alibi_slopes(8)[0::2][:2])
    assert not hasattr(micro(position="alibi"), "rope_cos")


def test_bias_option_adds_a_bias_to_every_linear_layer():
    plain, biased = micro(), micro(bias=True)
    per_layer = 32 * 3 + 32 + 2 * plain.config.ffn_hidden + 32  # q,k,v + o + gate,up + down
    assert count_parameters(biased) - count_parameters(plain) == 2 * per_layer


# ----------------------------------------------------------------------------------------------------------------
# µP
# ----------------------------------------------------------------------------------------------------------------
def test_mup_multipliers_and_attention_scale():
    cfg = dict(d_model=64, mup_base_width=16, mup_embedding_mult=3.0, mup_output_mult=2.0)
    model = micro(mup=True, **cfg)
    assert model.config.width_mult == 4.0
    assert model.layers[0].attn.scale == 1 / 16  # 1/head_dim, not 1/sqrt(head_dim)
    x = torch.randint(0, 128, (1, 8))
    hidden = model(x, return_hidden=True)
    torch.testing.assert_close(model(x), hidden @ model.lm_head.weight.T * (2.0 / 4.0))
    # the same weights without µP compute something else
    sp = Transformer(ModelConfig(**{**model.config.to_dict(), "mup": False})).eval()
    sp.load_state_dict(model.state_dict())
    assert sp.layers[0].attn.scale is None and not torch.allclose(sp(x), model(x), atol=1e-3)


def test_mup_init_shrinks_hidden_weights_with_width():
    narrow, wide = micro(mup=True, d_model=64, mup_base_width=64), micro(mup=True, d_model=256, mup_base_width=64)
    ratio = narrow.layers[0].attn.wq.weight.std() / wide.layers[0].attn.wq.weight.std()
    assert 1.8 < ratio < 2.2  # std / sqrt(width_mult), width_mult 4
    # embeddings are not hidden weights: same std at every width
    assert abs(narrow.embed.weight.std() / wide.embed.weight.std() - 1) < 0.1


def test_optimizer_groups_scale_hidden_lr_only():
    model = micro(mup=True, d_model=64, mup_base_width=16, tie_embeddings=False, bias=True)
    groups = optimizer_groups(model, lr=0.01, weight_decay=0.1)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    params = dict(model.named_parameters())
    assert by_id[id(params["layers.0.attn.wq.weight"])]["lr"] == pytest.approx(0.01 / 4)
    assert by_id[id(params["layers.1.mlp.w_down.weight"])]["lr_scale"] == pytest.approx(1 / 4)
    for name in ("embed.weight", "lm_head.weight"):
        assert by_id[id(params[name])]["lr"] == 0.01 and by_id[id(params[name])]["weight_decay"] == 0.1
    for name in ("layers.0.attn_norm.weight", "layers.0.attn.wq.bias", "norm.weight"):
        assert by_id[id(params[name])]["lr"] == 0.01 and by_id[id(params[name])]["weight_decay"] == 0.0
    # without µP: the plain decay/no-decay split, every lr_scale 1, matrices in model order (saved optimizer states
    # index parameters by position)
    plain = micro(bias=True)
    groups = optimizer_groups(plain, 0.01, 0.1)
    assert {g["lr_scale"] for g in groups} == {1.0} and [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert groups[0]["params"] == [p for p in plain.parameters() if p.dim() >= 2]
    assert groups[1]["params"] == [p for p in plain.parameters() if p.dim() < 2]


def _markov_batches(steps: int, vocab: int = 32, length: int = 32, batch: int = 16) -> list[torch.Tensor]:
    """Sequences from a fixed random Markov chain with peaked transitions: learnable in a few dozen steps."""
    g = torch.Generator().manual_seed(1234)
    transitions = torch.softmax(torch.randn(vocab, vocab, generator=g) * 3.0, -1)
    out = []
    for _ in range(steps):
        x = torch.empty(batch, length + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(length):
            x[:, t + 1] = torch.multinomial(transitions[x[:, t]], 1, generator=g).squeeze(1)
        out.append(x)
    return out


def _final_loss(width: int, lr: float, mup: bool, data: list[torch.Tensor]) -> float:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, context_length=32, n_layer=1, n_head=4, d_model=width, tie_embeddings=False,
                      mup=mup, mup_base_width=64)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(optimizer_groups(model, lr, 0.0), betas=(0.9, 0.95))
    losses = []
    for x in data:
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    last = sum(losses[-5:]) / 5
    return last if math.isfinite(last) else float("inf")


def test_mup_learning_rate_transfers_across_widths():
    """With µP the best learning rate found at width 64 is still the best at 128 and 256 (Yang et al. 2022; BTLM
    tunes at d_model 256 and transfers to 2560). Toy problem: a 32-token Markov chain, 1 layer, 30 Adam steps, a
    3x-spaced LR grid, the loss averaged over the last 5 steps.

    Measured (this setup), final losses over the LR grid 1e-3 / 3e-3 / 1e-2 / 3e-2:
        µP  width  64: 2.177 1.643 1.621 2.556   best 1e-2
        µP  width 128: 2.180 1.641 1.604 2.932   best 1e-2
        µP  width 256: 2.156 1.638 1.594 2.895   best 1e-2
        SP  width  64: 2.170 1.643 1.614 2.258   best 1e-2
        SP  width 128: 1.681 1.579 1.824 2.921   best 3e-3
        SP  width 256: 1.577 1.640 2.063 2.882   best 1e-3
    so under the standard parametrisation the optimum drifts down about 3x per doubling of width (wider models need
    a smaller LR), which is what µP removes. (The same holds with 2 layers: µP 3e-3 at every width, SP 1e-2, 3e-3,
    1e-3.) One thread: the run is many tiny matmuls, which oversubscribed threads only slow down."""
    data = _markov_batches(30)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    grid = [1e-3, 3e-3, 1e-2, 3e-2]
    best = {}
    try:
        for width in (64, 128, 256):
            losses = [_final_loss(width, lr, True, data) for lr in grid]
            best[width] = min(range(len(grid)), key=losses.__getitem__)
    finally:
        torch.set_num_threads(threads)
    assert 0 < best[64] < len(grid) - 1, best  # the grid brackets the optimum, so "same argmin" means something
    # same or adjacent grid point (measured: the same); SP's optimum moves two grid points from 64 to 256
    assert abs(best[128] - best[64]) <= 1 and abs(best[256] - best[64]) <= 1, best


def test_gelu_mlp_is_gpt2_sized():
    gelu = ModelConfig(mlp="gelu")
    assert gelu.ffn_hidden == 4 * gelu.d_model and ModelConfig().ffn_hidden == 704  # SwiGLU: 8/3 d, rounded up
    narrower = ModelConfig(mlp="gelu", ffn_hidden=64)
    assert count_parameters(gelu) - count_parameters(narrower) == gelu.n_layer * 2 * gelu.d_model * (1024 - 64)
