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
    """Train loss and every validation stream of each run against tokens, one PNG."""
    import matplotlib
    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    # Colour tells the curves of a run apart (train, then each validation stream); line style and marker tell the
    # runs apart. One colour per run made a run's validation streams differ only by a 4-pixel marker.
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]
    for i, run in enumerate(run_dirs):
        records = read_metrics(run)
        style, marker = styles[i % len(styles)], "os^vD"[i % 5]
        prefix = f"{Path(run).name} " if len(run_dirs) > 1 else ""
        train = [r for r in records if r.get("kind") == "train"]
        if train:
            ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], color="C0", linestyle=style,
                    linewidth=1.2, label=f"{prefix}train")
        val = [r for r in records if r.get("kind") == "val"]
        streams = sorted({k for r in val for k in r if k.startswith("val_") and not k.endswith("_bpb")})
        for j, stream in enumerate(streams):
            pts = [(r["tokens"], r[stream]) for r in val if stream in r]
            ax.plot(*zip(*pts), color=f"C{(j + 1) % 10}", linestyle=style, marker=marker, markersize=5,
                    linewidth=1.8, label=f"{prefix}{stream.removeprefix('val_')} (validation)")
    if len(run_dirs) == 1:
        ax.set_title(Path(run_dirs[0]).name)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    with atomic_path(out) as tmp:  # readers never see half a PNG
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out
