"""Checkpoints: one directory each, written atomically.

    step_000500/
      model.safetensors   weights (tied embeddings stored once)
      config.json         model config, tokenizer identity, capabilities, code version, file sizes
      trainer.pt          optimizer/scheduler/RNG/data position (training checkpoints only)

A checkpoint is first written to a hidden temp directory beside its final name, every file fsync'd, then renamed
into place, so a crash at any moment leaves the previous checkpoint whole. A run directory keeps its checkpoints in
`checkpoints/`; commands that take a model accept either a checkpoint directory or a run directory (its latest).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codelm import code_version
from codelm.atomic import atomic_directory
from codelm.errors import CheckpointError
from codelm.fast_paths import apply_fast_paths
from codelm.model import ModelConfig, Transformer
from codelm.prompts import FIM_FORMATS
from codelm.terms import FIM, FIM_FORMATS_KEY, MIM, can

FORMAT = "codelm-checkpoint/1"
WEIGHTS, CONFIG, TRAINER = "model.safetensors", "config.json", "trainer.pt"


@dataclass
class Checkpoint:
    """What a loaded checkpoint gives its user."""
    path: Path
    model: Transformer
    tokenizer: object
    config: ModelConfig
    capabilities: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def default_capabilities(tokenizer, context_length: int, objectives: dict[str, float] | None = None) -> dict:
    """What a model can do, recorded so that generation/eval/serving can refuse modes it was never trained for."""
    objectives = objectives or {"l2r": 1.0}
    return {
        "objectives": objectives,
        "can_l2r": True,  # every codelm window's forward direction is plain left-to-right
        can(FIM): FIM in objectives,
        can(MIM): MIM in objectives,
        FIM_FORMATS_KEY: list(FIM_FORMATS) if FIM in objectives else [],
        "markers": {"l2r": tokenizer.l2r_id, "r2l": tokenizer.r2l_id},
        "sentinels": {"eot": tokenizer.eot_id, "fim_prefix": tokenizer.fim_prefix_id,
                      "fim_middle": tokenizer.fim_middle_id, "fim_suffix": tokenizer.fim_suffix_id},
        "context_length": context_length,
        "tokenizer_hash": tokenizer.hash,
    }


# ----------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------
def _unique_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict without the tied duplicate (safetensors refuses shared storage)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = getattr(model, "config", None)
    return Transformer.state_for_saving(config, state) if config is not None else state


def save_checkpoint(path: str | os.PathLike, model: Transformer, tokenizer, *, capabilities: dict | None = None,
                    train_state: dict | None = None, meta: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir + fsync + rename). Returns the final path."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_directory(path) as tmp:
        save_file(_unique_tensors(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        if hasattr(tokenizer, "save_files"):  # an imported model's HF tokenizer travels as tokenizer.json
            tokenizer.save_files(tmp)
        if train_state is not None:
            torch.save(train_state, tmp / TRAINER)
        config = {
            "format": FORMAT,
            "model": model.config.to_dict(),
            "tokenizer": tokenizer.describe(),
            "capabilities": capabilities or default_capabilities(tokenizer, model.config.context_length),
            "code_version": code_version(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {},
            **(meta or {}),
        }
        for name in (WEIGHTS, TRAINER):
            if (tmp / name).exists():
                config["files"][name] = {"bytes": (tmp / name).stat().st_size}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Finding and loading
# ----------------------------------------------------------------------------------------------------------------
def is_checkpoint_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """A run's complete checkpoints, oldest first (temp dirs of interrupted saves are ignored)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.name.startswith("step_") and is_checkpoint_dir(p)]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else -1)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory meaning its latest checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {path}")
    if is_checkpoint_dir(path):
        return path
    if (path / CONFIG).is_file() and not (path / WEIGHTS).exists() and (path / "checkpoints").is_dir() is False:
        raise CheckpointError(f"{path / WEIGHTS}: missing (the checkpoint is incomplete)")
    ckpts = list_checkpoints(path)
    if ckpts:
        return ckpts[-1]
    if (path / CONFIG).is_file():
        raise CheckpointError(f"{path / WEIGHTS}: missing (the checkpoint is incomplete)")
    raise CheckpointError(f"{path}: neither a checkpoint (no {CONFIG} + {WEIGHTS}) nor a run directory with "
                          f"checkpoints/")


def read_checkpoint_config(path: Path) -> dict:
    cfg_path = path / CONFIG
    try:
        config = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: corrupt JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a codelm checkpoint config (format {config.get('format')!r}, "
                              f"expected {FORMAT!r})" if isinstance(config, dict) else f"{cfg_path}: not an object")
    for key in ("model", "tokenizer"):
        if key not in config:
            raise CheckpointError(f"{cfg_path}: missing field {key!r}")
    return config


def load_state_dict(path: Path, expected_bytes: int | None = None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    size = weights.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise CheckpointError(f"{weights}: truncated or modified ({size} bytes, config.json recorded "
                              f"{expected_bytes})")
    try:
        return load_file(str(weights))
    except Exception as e:  # SafetensorError and friends: the header or data is damaged
        raise CheckpointError(f"{weights}: corrupt safetensors file ({e})") from None


def build_tokenizer(desc: dict, path: Path | None = None):
    from codelm.tokenizer import get_tokenizer

    if desc.get("kind") == "hf":  # an imported model's own tokenizer, stored as tokenizer.json beside the weights
        from codelm.hf_tokenizer import HFTokenizer
        return HFTokenizer.from_checkpoint(path, desc)
    tok = get_tokenizer(desc["name"])
    tok.check_same(desc, "this checkpoint")
    return tok


def load_matching_state(model: torch.nn.Module, state: dict, where: str, config_name: str,
                        display=lambda name: name) -> None:
    """Load `state` into `model`, or name the first mismatched tensors (weights that do not fit their config are
    a corrupt or mixed-up checkpoint, not a bug). `display` maps codelm names to the file's own (HF) names."""
    expected = model.state_dict()
    missing = sorted(set(expected) - {k for k, v in state.items() if v is not None})
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where}: weights do not match {config_name} (missing "
                              f"{[display(k) for k in missing[:3]]}, unexpected {[display(k) for k in unexpected[:3]]})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{where}: tensor {display(k)} has shape {tuple(v.shape)}, {config_name} says "
                                  f"{tuple(expected[k].shape)}")
    model.load_state_dict(state)


def load_native_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", dtype=None) -> Checkpoint:
    """Load a codelm checkpoint (or a run's latest) into an eval-mode model on `device`, with clear errors.
    Commands call codelm.loader.load_checkpoint, which also takes a Hugging Face directory."""
    path = resolve_checkpoint(path)
    config = read_checkpoint_config(path)
    try:
        model_cfg = ModelConfig.from_dict(config["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: bad model config ({e})") from None
    tokenizer = build_tokenizer(config["tokenizer"], path)
    state = load_state_dict(path, config.get("files", {}).get(WEIGHTS, {}).get("bytes"))
    model = apply_fast_paths(Transformer(model_cfg))
    state = Transformer.state_for_loading(model_cfg, state)
    load_matching_state(model, state, f"{path / WEIGHTS}", "its config")
    model.to(device=device, dtype=dtype).eval()
    return Checkpoint(path=path, model=model, tokenizer=tokenizer, config=model_cfg,
                      capabilities=config.get("capabilities", {}), meta=config)


def load_train_state(path: Path) -> dict:
    trainer = Path(path) / TRAINER
    if not trainer.is_file():
        raise CheckpointError(f"{trainer}: missing (this checkpoint cannot resume training)")
    try:
        return torch.load(trainer, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{trainer}: corrupt trainer state ({type(e).__name__})") from None


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints (0 keeps all); also clear temp dirs of interrupted saves."""
    ckpts = list_checkpoints(run_dir)
    if keep_last > 0:
        for old in ckpts[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    ckpt_dir = Path(run_dir) / "checkpoints"
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith((".tmp-", ".old-")) and not p.name.split("-")[2:3] == [str(os.getpid())]:
                shutil.rmtree(p, ignore_errors=True)
