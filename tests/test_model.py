import pytest
import torch

from codelm.model import ModelConfig, Transformer, count_parameters, flops_per_token, preset_config


def micro(**kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, context_length=64, n_layer=2, n_head=4, d_model=32, **kw)
    return Transformer(cfg).eval()


@pytest.mark.parametrize("n_kv_head", [0, 2, 1])
def test_causal_masking(n_kv_head):
    """Changing token t never changes the logits before t."""
    model = micro(n_kv_head=n_kv_head)
    x = torch.randint(0, 128, (2, 20))
    base = model(x)
    for t in (0, 7, 19):
        x2 = x.clone()
        x2[:, t] = (x2[:, t] + 1) % 128
        out = model(x2)
        torch.testing.assert_close(out[:, :t], base[:, :t])
        assert not torch.allclose(out[:, t:], base[:, t:])


@pytest.mark.parametrize("n_kv_head", [0, 1])
def test_kv_cache_decoding_equals_full_forward(n_kv_head):
    model = micro(n_kv_head=n_kv_head)
    x = torch.randint(0, 128, (3, 24))
    full = model(x)
    model.setup_cache(3, 64)
    pieces = [model(x[:, :10])]  # prefill
    for t in range(10, 24):  # then one token at a time
        pieces.append(model(x[:, t:t + 1]))
    model.clear_cache()
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_a_decoding_step_always_sees_its_own_key():
    """A row whose newest slot is marked padding (meet-in-the-middle's finished side rides along as a dummy row)
    must still attend to something: a fully masked row would put NaN into the cache for later steps to read."""
    model = micro()
    model.setup_cache(2, 64)
    x = torch.randint(0, 128, (2, 6))
    keys = torch.ones(2, 7, dtype=torch.bool)
    model(x, key_padding=keys[:, :6])
    keys[1, :] = False  # row 1 sees no key at all, its own included
    step = model(torch.tensor([[3], [4]]), key_padding=keys)
    assert torch.isfinite(step).all() and torch.isfinite(model.layers[0].attn.cache.v[:, :, :7]).all()
    model.clear_cache()


def test_left_padded_batch_matches_unpadded_rows():
    """Prompts of different lengths in one batch: left padding + key mask + per-row positions."""
    model = micro()
    a, b = torch.randint(0, 128, (1, 12)), torch.randint(0, 128, (1, 7))
    pad = torch.zeros(1, 5, dtype=torch.long)
    batch = torch.cat([a, torch.cat([pad, b], dim=1)])
    keys = torch.ones(2, 12, dtype=torch.bool)
    keys[1, :5] = False
    positions = torch.stack([torch.arange(12), torch.clamp(torch.arange(12) - 5, min=0)])
    out = model(batch, positions=positions, key_padding=keys)
    torch.testing.assert_close(out[0], model(a)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 5:], model(b)[0], atol=1e-5, rtol=1e-5)


def test_positions_beyond_context_are_refused():
    model = micro()
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_presets_have_the_documented_sizes():
    assert 8e6 < count_parameters(preset_config("tiny")) < 12e6
    assert 40e6 < count_parameters(preset_config("small")) < 60e6
    big = preset_config("350m")
    assert (big.n_layer, big.n_head, big.head_dim, big.n_kv_head, big.context_length) == (24, 16, 64, 1, 2048)
    assert (preset_config("1.3b").head_dim, preset_config("2.7b").n_head, preset_config("2.7b").head_dim) == (128, 32, 80)


def test_flops_per_token_follows_the_6n_rule():
    cfg = preset_config("tiny")
    f = flops_per_token(cfg)
    n = count_parameters(cfg, non_embedding=True) + cfg.vocab_size * cfg.d_model
    assert f["train"] == 6 * n + 12 * cfg.n_layer * cfg.d_model * cfg.context_length
    assert f["forward"] * 3 == f["train"]


def test_tied_embeddings_share_storage():
    model = micro()
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()
    assert micro(tie_embeddings=False).lm_head.weight.data_ptr() != micro(tie_embeddings=False).embed.weight.data_ptr()


def test_bad_head_configuration_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, n_head=4)


@pytest.mark.parametrize("options", [dict(), dict(n_kv_head=1), dict(bias=True, mlp="gelu", position="learned",
                                                                        norm="layernorm")])
@pytest.mark.parametrize("onednn", [True, False])  # oneDNN's packed weights, or the transposed-copy fallback
def test_inference_on_packed_weights_equals_the_plain_projections(options, onednn, monkeypatch):
    """fp32 inference on CPU runs the projections on packed copies of the weights (q/k/v and gate/up side by side):
    the logits are those of the plain projections, and a weight changed in place (an optimizer step, loading a
    checkpoint) is seen at once, not a stale copy. A model that has run inference can still be copied."""
    import copy

    import codelm.model
    if onednn and not codelm.model.ONEDNN:
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(codelm.model, "ONEDNN", onednn)
    model = micro(**options)
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
