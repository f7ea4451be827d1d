"""The one loader: whatever a command is given as its model, loaded as a `Checkpoint`.

    a codelm checkpoint directory       codelm/checkpoint.py (codelm's own format)
    a run directory                     its latest checkpoint
    a Hugging Face model directory      codelm/hf.py (converted on the fly)

It sits above both formats so that neither imports the other: hf.py builds on checkpoint.py (a converted model is a
Checkpoint; `codelm import-hf` saves one), and checkpoint.py knows nothing of Hugging Face weights.
"""

from __future__ import annotations

import os

from codelm.checkpoint import Checkpoint, load_native_checkpoint
from codelm.hf import import_hf, is_hf_model_dir


def load_checkpoint(path: str | os.PathLike, device="cpu", dtype=None) -> Checkpoint:
    """Load the model at `path` (see the module docstring) in eval mode on `device`, with clear errors."""
    if is_hf_model_dir(path):  # its config.json has a model_type and, unlike codelm's, no format
        ckpt = import_hf(path)
        ckpt.model.to(device=device, dtype=dtype)
        return ckpt
    return load_native_checkpoint(path, device=device, dtype=dtype)
