"""Tiny random transformers models of several architectures and small byte-level BPE tokenizers, built locally
(no hub): what the transformers-backend tests run on. Import as `from hf_tiny import ...`."""

from __future__ import annotations

import functools
import inspect

EOS = "<|endoftext|>"
BOS = "<s>"
FAMILY_SENTINELS = {
    "starcoder": ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<file_sep>"],
    "santacoder": ["<fim-prefix>", "<fim-middle>", "<fim-suffix>"],
    "codellama": ["<PRE>", "<SUF>", "<MID>", "<EOT>"],
    "deepseek-coder": ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜end▁of▁sentence｜>"],
    "qwen2.5-coder": ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|file_sep|>"],
}
ARCHITECTURES = ("llama", "phi", "starcoder2", "qwen2", "gpt_bigcode")


def corpus() -> list[str]:
    import json
    import textwrap
    import codelm.generate as a
    import codelm.infill as b
    return [inspect.getsource(m) for m in (a, b, json, textwrap)]  # a little real Python, no files needed


@functools.lru_cache(maxsize=None)
def make_tokenizer(fim_family: str | None = None, bos: bool = False, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on a little Python, with an end-of-text token, the FIM sentinels of
    `fim_family`, and (bos=True) a BOS token its post-processor puts before every text, as Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS] + ([BOS] if bos else []) + FAMILY_SENTINELS.get(fim_family, [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                           special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=BOS if bos else None)


def make_model(arch: str, vocab_size: int, seed: int = 0, context: int = 256):
    """A 2-layer random model of the architecture. Weights drawn wide (std 0.3) so that greedy choices are far from
    ties: equality tests then test the code, not float rounding."""
    import torch
    import transformers as tf

    small = dict(vocab_size=vocab_size, num_hidden_layers=2, num_attention_heads=4, hidden_size=64,
                 intermediate_size=128, max_position_embeddings=context, initializer_range=0.3)
    configs = {
        "llama": lambda: tf.LlamaConfig(num_key_value_heads=2, **small),
        "phi": lambda: tf.PhiConfig(partial_rotary_factor=0.5, **small),
        "starcoder2": lambda: tf.Starcoder2Config(num_key_value_heads=2, **small),
        "qwen2": lambda: tf.Qwen2Config(num_key_value_heads=2, **small),
        "gpt_bigcode": lambda: tf.GPTBigCodeConfig(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4,
                                                   n_positions=context, multi_query=True, initializer_range=0.3),
    }
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(configs[arch]())
    return model.eval()


def save_model_dir(path, arch: str, fim_family: str | None = None, bos: bool = False):
    """A Hugging Face model directory of a tiny `arch` model and its tokenizer, the model's configs agreeing with the
    tokenizer on BOS (None without one, as Qwen2.5-Coder's and StarCoder's) and EOS."""
    tok = make_tokenizer(fim_family, bos=bos)
    model = make_model(arch, len(tok.get_vocab()))
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
