"""`codelm data stats DIR`: a shard directory's manifest as a table, and a picture of its distributions.

The table: splits (documents, tokens, bytes/token), then one row per stage (documents and MB in and out, removals by
reason), unreadable inputs, decontamination (benchmarks, what was dropped) and per-stage speed from timings.json.
The picture (`stats.png` next to the shards): document length in tokens (log scale, from the shards' own offsets) and
the educational-value score histogram recorded by the pipeline, with its threshold.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def format_stats(path, index: dict) -> str:
    manifest = index.get("manifest", {})
    out = [f"shards: {path}  (tokenizer {index['tokenizer']['name']}, {index['dtype']}, "
           f"manifest {index.get('manifest_hash', '')[:12]})"]
    for name, s in index["splits"].items():
        out.append(f"  {name:6s} {s['n_docs']:>7,} docs  {s['n_tokens']:>12,} tokens  {s['n_bytes']:>13,} bytes  "
                   f"{s['n_bytes'] / max(1, s['n_tokens']):.2f} bytes/token")
    if "input" in manifest:
        out.append(f"  source {manifest.get('source')!r}: {manifest['input']['docs']:,} documents, "
                   f"{manifest['input']['bytes'] / 1e6:.2f} MB read; "
                   f"{manifest.get('unreadable', {}).get('count', 0)} unreadable "
                   f"{manifest.get('unreadable', {}).get('reasons', '') or ''}".rstrip())
    stages = manifest.get("stages", [])
    timings = {t["name"]: t for t in _timings(path).get("stages", [])}
    if stages:
        out.append(f"  {'stage':15s} {'docs in':>8s} {'docs out':>8s} {'MB in':>7s} {'MB out':>7s} {'MB/s':>6s}  "
                   f"removed")
        for st in stages:
            removed = ", ".join(f"{k}: {v}" for k, v in st.get("removed", {}).items()) or "-"
            speed = timings.get(st["name"], {}).get("mb_per_s")
            out.append(f"  {st['name']:15s} {st['docs_in']:>8,} {st['docs_out']:>8,} {st['bytes_in'] / 1e6:>7.2f} "
                       f"{st['bytes_out'] / 1e6:>7.2f} {speed if speed is not None else '-':>6}  {removed}")
    if manifest.get("decontaminated"):
        d = manifest.get("decontamination", {})
        out.append(f"  decontaminated against {', '.join(d.get('benchmarks', []))} ({d.get('n_items', '?')} "
                   f"problems; code {d.get('code_ngram')}-grams >= {d.get('min_overlap')} overlap, "
                   f"text {d.get('text_ngram')}-grams): {len(d.get('dropped', []))} dropped")
        for row in d.get("dropped", [])[:5]:
            out.append(f"    {row['id']}: {', '.join(row['matches'][:3])}")
    elif manifest:
        out.append("  NOT decontaminated against the evaluation benchmarks")
    return "\n".join(out)


def _timings(path) -> dict:
    f = Path(path) / "timings.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError:
        return {}


def plot_stats(path, index: dict, out: str | Path | None = None) -> Path:
    """Write the distributions' PNG (default DIR/stats.png); returns its path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    edu = index.get("manifest", {}).get("edu_scores")
    fig, axes = plt.subplots(1, 2 if edu else 1, figsize=(11 if edu else 6, 4), squeeze=False)
    ax = axes[0][0]
    for name, meta in index["splits"].items():
        lengths = np.concatenate([np.diff(np.load(path / e["docs_file"])) for e in meta.get("files", [meta])])
        if len(lengths):
            ax.hist(lengths, bins=np.logspace(0, max(1.0, np.log10(lengths.max()) + 0.1), 30), alpha=0.6,
                    label=f"{name} ({len(lengths):,} docs)")
    ax.set_xscale("log")
    ax.set_xlabel("document length (tokens, incl. end-of-text)")
    ax.set_ylabel("documents")
    ax.legend()
    if edu:
        ax = axes[0][1]
        edges, counts = np.array(edu["histogram"]["edges"]), edu["histogram"]["counts"]
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", alpha=0.7)
        ax.axvline(edu["threshold"], color="red", linestyle="--", label=f"threshold {edu['threshold']}")
        ax.set_xlabel(f"educational-value score ({edu['scorer']})")
        ax.set_ylabel("documents")
        ax.legend()
    fig.tight_layout()
    target = Path(out) if out else path / "stats.png"
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(target)
    return target
