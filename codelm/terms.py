"""The shared vocabulary: finish reasons, infilling modes and capability names, defined once. Decoding, infilling,
checkpoints and the server use these words; only the API edges translate them (web/app.py: OpenAI's
`stop`/`length`, llama.cpp's `eos`/`limit`). Plain strings, so results and JSON files carry them as they are."""

from __future__ import annotations

# Why a sequence ended
EOT = "eot"              # the model wrote end-of-text
STOP = "stop"            # a stop string matched (or the consumer stopped the row)
LENGTH = "length"        # max_new_tokens, or the context, ran out
MET = "met"              # meet-in-the-middle: the two sides joined
CANCELLED = "cancelled"  # the server: the client went away or the server stopped
ERROR = "error"          # the server: generation failed
ENDED_CLEANLY = (EOT, STOP)  # the sequence decided to end (FIM's EOT-aware ranking prefers these)

# Infilling modes: fill-in-the-middle prompts (Bavarian et al. 2022) or meet-in-the-middle decoding (MIM paper)
FIM, MIM = "fim", "mim"
INFILL_MODES = (FIM, MIM)


def can(mode: str) -> str:
    """The capability a checkpoint records when it was trained for an infilling mode: `can_fim`, `can_mim`."""
    return f"can_{mode}"


FIM_FORMATS_KEY = "fim_formats"  # the FIM layouts (codelm.prompts.FIM_FORMATS) a checkpoint was trained on

# Attention masks a checkpoint was trained with (codelm/packing.py): causal over the whole packed window, or
# block-causal per document with positions restarting at each (`--attention-mask document`)
ATTENTION_MASK_KEY = "attention_mask"
CAUSAL, DOCUMENT = "causal", "document"

# `--compile` for decoding (codelm/compiled.py decides what auto means for a model)
COMPILE_SETTINGS = ("auto", "on", "off")
COMPILE_HELP = ("compiled decoding (static KV cache, a graph per bucketed shape): on, off, or auto (on for a CUDA "
                "model; on CPU only for decodes long enough to repay tens of seconds of compiling per batch size, "
                "~10^5 tokens)")
