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


def test_cache_api_truncates_selects_and_installs_rows_as_a_full_forward_would():
    """A draft's rejected slots are forgotten, rows can be repeated or dropped, and rows kept from one cache and
    installed right-aligned in another decode as they would have in their own: the same logits as a full pass."""
    model = micro()
    a, b = torch.randint(0, 128, (1, 10)), torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        full_a, full_b = model(a), model(b)
        model.setup_cache(1, 32)
        model(a[:, :6])
        model(torch.randint(0, 128, (1, 3)))  # a draft, all rejected
        model.truncate_cache(6)
        torch.testing.assert_close(model(a[:, 6:9]), full_a[:, 6:9], rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError):
            model.truncate_cache(12)
        model.select_cache_rows(torch.tensor([0, 0]))  # one prompt, two samples
        kept_a = model.cache_rows(1, 9)
        model.setup_cache(1, 8)
        model(b[:, :4])
        kept_b = model.cache_rows(0, 4)
        model.install_cache_rows([kept_a, kept_b], capacity=20)
        assert (model.cache_length, model.cache_capacity) == (9, 20)
        key_padding = torch.ones(2, 10, dtype=torch.bool)
        key_padding[1, :5] = False  # row b is right-aligned: its 4 tokens sit in slots 5-8
        step = model(torch.cat([a[:, 9:], b[:, 4:]]), positions=torch.tensor([[9], [4]]), key_padding=key_padding)
        model.clear_cache()
    torch.testing.assert_close(step[0, -1], full_a[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(step[1, -1], full_b[0, -1], rtol=1e-4, atol=1e-4)


CACHE_STATE = {"cache_length", "_cache_length", "cache", "k", "v"}


def _writes_to_cache_state(tree) -> list[str]:
    """Assignments (plain, augmented, annotated, deletions) to the cache's attributes, and setattr/delattr calls
    naming one (a name computed at run time, as in config.py's dataclass filling, is not the cache's)."""
    import ast

    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Attribute) and sub.attr in CACHE_STATE:
                    found.append(f"line {sub.lineno}: .{sub.attr} =")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and name.value in CACHE_STATE:
                found.append(f"line {node.lineno}: {node.func.id}(...)")
    return found


def test_only_the_model_writes_its_cache_state():
    """The model owns its KV cache: no module outside codelm/model.py assigns cache_length or a layer's cache (or
    its k/v buffers), by assignment or setattr; they use the model's cache methods."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = {}
    for folder in ("codelm", "web", "evals"):
        for path in sorted((root / folder).rglob("*.py")):
            if path == root / "codelm" / "model.py":
                continue
            found = _writes_to_cache_state(ast.parse(path.read_text(), str(path)))
            if found:
                offenders[str(path.relative_to(root))] = found
    assert offenders == {}
    planted = ast.parse("model.cache_length = 3\nlayer.attn.cache = c\nsetattr(m, 'cache_length', 1)\n"
                        "x.k += y\ndel m.attn.cache\nsetattr(m, name, 1)\n")
    assert len(_writes_to_cache_state(planted)) == 5  # the check sees each kind of write


def test_the_model_file_has_no_cpu_fast_paths():
    """model.py reads top to bottom: the oneDNN packing and the malloc setting live in codelm/fast_paths.py."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "codelm" / "model.py").read_text()
    assert "torch.ops.mkldnn" not in text and "ctypes" not in text
