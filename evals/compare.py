"""`codelm eval compare A B ...`: put evaluation output directories side by side, as Markdown and HTML with a chart.

Each directory is what `codelm eval` wrote (summary.json, results.jsonl). The report has one row per run (benchmark,
model, protocol, pass@k with its 95% bootstrap interval, timeouts counted apart, provenance) and, for runs of the same
benchmark, a per-task table of pass rates. The chart (matplotlib, Agg backend, PNG beside the reports) shows pass@1
with its interval for each run.
"""

import html
import json
from pathlib import Path

from evals.data import EvalInputError


def load_run(path) -> dict:
    path = Path(path)
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise EvalInputError(f"{path}: no summary.json (not a `codelm eval` output directory?)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    per_task = {}
    results_path = path / "results.jsonl"
    if results_path.is_file():
        for line in results_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                n, c = per_task.get(r["task_id"], (0, 0))
                per_task[r["task_id"]] = (n + 1, c + bool(r["passed"]))
    return {"name": path.name, "path": str(path), "summary": summary, "per_task": per_task}


def _cell(summary: dict, key: str) -> str:
    if key not in summary:
        return "-"
    ci = summary.get(f"{key}_ci95")
    return f"{100 * summary[key]:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def overview_rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    ks = sorted({key for run in runs for key in run["summary"] if key.startswith("pass@") and "_" not in key},
                key=lambda key: int(key[5:]))
    header = ["run", "benchmark", "model / source", "protocol", *ks, "timed out", "decontaminated", "code"]
    rows = []
    for run in runs:
        s = run["summary"]
        protocol = s.get("protocol", {})
        prov = protocol.get("provenance", {})
        rows.append([run["name"], s["benchmark"], protocol.get("source", ""), protocol.get("description", ""),
                     *[_cell(s, k) for k in ks], str(s.get("counts", {}).get("timed_out", 0)),
                     str(prov.get("data_decontaminated", "-")), str(prov.get("eval_code_version", "-"))])
    return header, rows


def task_rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    tasks = list(dict.fromkeys(t for run in runs for t in run["per_task"]))
    rows = []
    for t in tasks:
        cells = []
        for run in runs:
            n, c = run["per_task"].get(t, (0, 0))
            cells.append(f"{c}/{n}" if n else "-")
        rows.append([t, *cells])
    return ["task", *[run["name"] for run in runs]], rows


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def draw_chart(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display; and never the user's interactive backend
    import matplotlib.pyplot as plt

    names = [run["name"] for run in runs]
    values = [100 * run["summary"].get("pass@1", 0.0) for run in runs]
    cis = [run["summary"].get("pass@1_ci95", [v / 100, v / 100]) for run, v in zip(runs, values)]
    errors = [[v - 100 * lo for v, (lo, _) in zip(values, cis)], [100 * hi - v for v, (_, hi) in zip(values, cis)]]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(runs) + 2), 3.5))
    ax.bar(names, values, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_ylabel("pass@1 (%) with 95% CI")
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(run_dirs: list, out_dir) -> dict[str, Path]:
    """Write report.md, report.html and pass_at_1.png into out_dir; return their paths."""
    if len(run_dirs) < 1:
        raise EvalInputError("compare needs at least one evaluation directory")
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chart = out / "pass_at_1.png"
    draw_chart(runs, chart)
    overview = overview_rows(runs)
    same_benchmark = len({run["summary"]["benchmark"] for run in runs}) == 1
    tasks = task_rows(runs) if same_benchmark else None
    warnings = [f"{run['name']}: training data not decontaminated; scores may be inflated" for run in runs
                if run["summary"].get("protocol", {}).get("provenance", {}).get("data_decontaminated") is False]
    md = ["# Evaluation comparison", "", markdown_table(*overview), "", *[f"> warning: {w}" for w in warnings],
          "", f"![pass@1]({chart.name})", ""]
    page = ["<!doctype html><meta charset='utf-8'><title>Evaluation comparison</title>",
            "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
            "<h1>Evaluation comparison</h1>", html_table(*overview),
            *[f"<p><b>warning:</b> {html.escape(w)}</p>" for w in warnings],
            f"<p><img src='{chart.name}' alt='pass@1 chart'></p>"]
    if tasks:
        md += ["## Per task (passed/samples)", "", markdown_table(*tasks), ""]
        page += ["<h2>Per task (passed/samples)</h2>", html_table(*tasks)]
    paths = {"markdown": out / "report.md", "html": out / "report.html", "chart": chart}
    paths["markdown"].write_text("\n".join(md), encoding="utf-8")
    paths["html"].write_text("\n".join(page), encoding="utf-8")
    return paths
