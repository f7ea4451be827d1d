"""Reading run directories and drawing their loss curves (`codelm runs plot RUN... [--out PNG]`).

A run's record is its metrics.jsonl (codelm/train.py): train records ({"kind": "train", "step", "tokens", "loss",
...}) and validation records ({"kind": "val", "step", "val_<stream>", ...}). Curves are drawn against tokens so runs
with different batch sizes line up; validation losses are dashed in the same colour.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from codelm.atomic import atomic_path
from codelm.errors import UserError


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: missing — is {run_dir} a run directory made by `codelm train`?")
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short when a run was killed
    return records


def plot_runs(run_dirs: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Train loss (solid) and every validation stream (dashed, markers) of each run against tokens, one PNG."""
    import matplotlib
    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(run_dirs):
        records = read_metrics(run)
        colour = f"C{i % 10}"
        train = [r for r in records if r.get("kind") == "train"]
        label = Path(run).name
        if train:
            ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], color=colour, label=f"{label} train")
        val = [r for r in records if r.get("kind") == "val"]
        streams = sorted({k for r in val for k in r if k.startswith("val_") and not k.endswith("_bpb")})
        for j, stream in enumerate(streams):
            pts = [(r["tokens"], r[stream]) for r in val if stream in r]
            ax.plot(*zip(*pts), color=colour, linestyle="--", marker="o^sv"[j % 4], markersize=4,
                    label=f"{label} {stream}")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    with atomic_path(out) as tmp:  # readers never see half a PNG
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
