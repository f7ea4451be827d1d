"""Running the pipeline's datatrove stages elsewhere than in local processes: Slurm job arrays and Ray.

Slurm: each stage becomes one sbatch script (a job array of its tasks; datatrove's SlurmPipelineExecutor writes
the script and the pickled pipeline each array task loads) and `submit.sh` chains them with `sbatch --parsable` and
`--dependency=afterok:...`, ending with a one-task job that reruns the same `codelm data prepare` command with the
local executor: every task then has its completion marker, so it only assembles the shards and the manifest.
datatrove has no dry run; `--dry-run` writes the scripts and submit.sh and submits nothing.

Ray: datatrove's RayPipelineExecutor on the cluster at `--ray-address`, or on a local Ray started here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from codelm.errors import DataError


def _sbatch_args(text: str) -> dict:
    """'--account=x --mem=8G --exclusive' -> {'account': 'x', 'mem': '8G', 'exclusive': ''}."""
    out = {}
    for item in shlex.split(text or ""):
        if not item.startswith("--"):
            raise DataError(f"--slurm-sbatch-args: {item!r} is not an sbatch option (expected --name=value)")
        key, _, value = item[2:].partition("=")
        out[key] = value
    return out


def write_slurm(cfg, runs: list, work: Path, command: list[str]) -> Path:
    """One sbatch script per stage and submit.sh under WORK/slurm; returns submit.sh's path."""
    import dill
    from datatrove.executor.slurm import SlurmPipelineExecutor
    from dill import CONTENTS_FMODE
    folder = work / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    extra = _sbatch_args(cfg.slurm_sbatch_args)
    venv = Path(sys.prefix) / "bin" / "activate"
    lines = ["#!/bin/bash", "# written by `codelm data prepare --executor slurm`; chains the stages' job arrays",
             "set -euo pipefail", f"cd {shlex.quote(os.getcwd())}"]
    previous = None
    for name, steps, tasks in runs:
        logging_dir = work / "logs" / name
        executor = SlurmPipelineExecutor(
            pipeline=steps, tasks=tasks, time=cfg.slurm_time, partition=cfg.slurm_partition or "",
            cpus_per_task=cfg.slurm_cpus, qos=cfg.slurm_qos or "", job_name=f"codelm-data-{name}",
            logging_dir=str(logging_dir), slurm_logs_folder=str(work / "slurm" / "logs" / name),
            venv_path=str(venv) if venv.is_file() else None, sbatch_args=extra, workers=-1)
        ranks = executor.get_incomplete_ranks()
        max_array = max(1, len(ranks))
        sbatch = executor.get_sbatch_args(max_array)
        if not cfg.slurm_partition:
            sbatch.pop("partition", None)
        if "mem" in extra:  # sbatch refuses --mem together with --mem-per-cpu
            sbatch.pop("mem-per-cpu", None)
        with executor.logging_dir.open("executor.pik", "wb") as f:
            dill.dump(executor, f, fmode=CONTENTS_FMODE)
        with executor.logging_dir.open("ranks_to_run.json", "w") as f:
            f.write(str(ranks))
        script = executor.get_launch_file_contents(
            sbatch, f"launch_pickled_pipeline {logging_dir / 'executor.pik'}")
        path = folder / f"{name}.slurm"
        path.write_text(script)
        var = f"job_{name}"
        dep = f" --dependency=afterok:${previous}" if previous else ""
        lines.append(f"{var}=$(sbatch --parsable --export=ALL,RUN_OFFSET=0{dep} {shlex.quote(str(path))})")
        lines.append(f'echo "{name}: job ${{{var}}} ({tasks} task(s))"')
        previous = var
    assemble = folder / "assemble.slurm"
    args = "\n".join(f"#SBATCH --{k}={v}" if v else f"#SBATCH --{k}" for k, v in {
        "job-name": "codelm-data-assemble", "time": cfg.slurm_time, "cpus-per-task": 1,
        **({"partition": cfg.slurm_partition} if cfg.slurm_partition else {}),
        **({"qos": cfg.slurm_qos} if cfg.slurm_qos else {}), **extra,
        "output": str(work / "slurm" / "logs" / "assemble.out")}.items())
    local = [a for a in command] + ["--executor", "local", "--dry-run", "false"]
    assemble.write_text(f"#!/bin/bash\n{args}\nset -e\n" + (f"source {venv}\n" if venv.is_file() else "")
                        + f"cd {shlex.quote(os.getcwd())}\n{shlex.join(local)}\n")
    lines.append(f"job_assemble=$(sbatch --parsable --dependency=afterok:${previous} {shlex.quote(str(assemble))})")
    lines.append('echo "assemble: job ${job_assemble}"')
    submit = folder / "submit.sh"
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit


def submit_slurm(submit: Path) -> None:
    try:
        subprocess.run(["bash", str(submit)], check=True)
    except FileNotFoundError:
        raise DataError("--executor slurm: bash not found") from None
    except subprocess.CalledProcessError as e:
        raise DataError(f"{submit}: sbatch failed (exit {e.returncode}); is this a Slurm login node? "
                        f"--dry-run writes the scripts without submitting") from None


def run_ray(cfg, steps: list, tasks: int, logging_dir: str) -> None:
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError:
        raise DataError("--executor ray needs Ray: pip install 'codelm[ray]'") from None
    if not ray.is_initialized():
        try:
            if cfg.ray_address:
                ray.init(address=cfg.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=max(1, cfg.workers), include_dashboard=False, log_to_driver=False)
        except Exception as e:  # connection refused, bad address: one line
            raise DataError(f"--ray-address {cfg.ray_address or '(local)'}: cannot start or reach Ray "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    RayPipelineExecutor(pipeline=steps, tasks=tasks, workers=max(1, cfg.workers), logging_dir=logging_dir,
                        cpus_per_task=1, mem_per_cpu_gb=1).run()
