"""The summary of an evaluation: pass@k over a named task set under a stated protocol, and a table for people."""

from collections import Counter

from evals.passk import mean_pass_at_k, pass_at_k


def summarize(benchmark, task_ids: list[str], results: list[dict], ks: list[int], protocol: dict,
              task_set: dict, not_scored: int = 0) -> dict:
    """pass@k is reported for each k only when every task of the set has at least k scored samples."""
    selected = set(task_ids)
    results = [r for r in results if r["task_id"] in selected]
    per_task = {t: [0, 0] for t in task_ids}  # task_id -> [n, c]
    for r in results:
        per_task[r["task_id"]][0] += 1
        per_task[r["task_id"]][1] += bool(r["passed"])
    summary = {"benchmark": benchmark.name, "set": task_set, "protocol": protocol}
    withheld = {}
    for k in sorted(set(ks)):
        short = sum(1 for n, _ in per_task.values() if n < k)
        if short:
            withheld[f"pass@{k}"] = f"{short} of {len(task_ids)} tasks have fewer than {k} scored samples"
        else:
            summary[f"pass@{k}"] = mean_pass_at_k([tuple(nc) for nc in per_task.values()], k)
            summary[f"pass@{k}_ci95"] = bootstrap_ci([tuple(nc) for nc in per_task.values()], k)
    summary.update(benchmark.extra_metrics(results))
    kinds = Counter(_kind(r["result"]) for r in results)
    summary["counts"] = {
        "tasks": len(task_ids),
        "tasks_with_samples": sum(1 for n, _ in per_task.values() if n),
        "samples": len(results),
        "passed": kinds["passed"],
        "failed": kinds["failed"],
        "timed_out": kinds["timed out"],
        "not_scored": not_scored,
    }
    if withheld:
        summary["withheld"] = withheld
    return summary


def bootstrap_ci(counts: list[tuple[int, int]], k: int, reps: int = 1000, seed: int = 0) -> list[float]:
    """A 95% percentile bootstrap interval for pass@k, resampling tasks (the benchmark's unit of variation)."""
    import random
    rng = random.Random(seed)  # fixed: the same results always give the same interval
    scores = [pass_at_k(n, c, k) for n, c in counts]
    means = sorted(sum(rng.choices(scores, k=len(scores))) / len(scores) for _ in range(reps))
    return [means[int(0.025 * reps)], means[int(0.975 * reps) - 1]]


def _kind(result: str) -> str:
    return "failed" if result.startswith("failed") else result


def format_table(summary: dict) -> str:
    protocol, task_set, counts = summary["protocol"], summary["set"], summary["counts"]
    lines = [
        f"{summary['benchmark']}: {task_set['selection']} ({task_set['source']})",
        f"protocol: {protocol['description']}; limit {protocol['cpu_s']:g} CPU seconds per program",
        "",
        f"{'metric':<14}{'value':>10}",
    ]
    for key, value in summary.items():
        if key.startswith("pass@") and key.endswith("_ci95"):
            continue
        if key.startswith("pass@") or key in ("exact_match", "base_pass_rate"):
            ci = summary.get(f"{key}_ci95")
            lines.append(f"{key:<14}{100 * value:>9.2f}%" + (f"  (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f})"
                                                             if ci else ""))
    for key, why in summary.get("withheld", {}).items():
        lines.append(f"{key:<14}{'-':>10}  ({why})")
    lines.append("")
    lines.append(f"samples: {counts['samples']} scored over {counts['tasks_with_samples']}/{counts['tasks']} tasks: "
                 f"{counts['passed']} passed, {counts['failed']} failed, {counts['timed_out']} timed out"
                 + (f"; {counts['not_scored']} NOT scored (sandbox infrastructure errors)" if counts["not_scored"]
                    else ""))
    return "\n".join(lines)
