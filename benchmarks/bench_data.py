"""Data pipeline throughput and memory: the whole `codelm data prepare` — the streaming datatrove pipeline with 1 and
2 tasks against the earlier in-memory pipeline (kept as `prepare_in_memory`), alternating in the same run — on the
standard library, on a quarter of the installed packages' sources and on all of them: end-to-end MB/s, per-stage
MB/s, documents kept per stage and the peak resident memory of the whole process tree (RSS, and PSS, which counts
the pages forked tasks share once); the quarter and the whole
corpus are the 1x and 4x corpora of the memory comparison (goal: 4x at most 1.25x the memory of 1x, streaming). Each run also reports the CPU
seconds of its process tree and, streaming, the wall seconds of its four datatrove runs (filter, buckets, cluster,
shards); first, this machine's ceiling for the 2-task goal: the same pure-Python work in one process, then in two at once.
Before that, per stage on the standard library, each stage alone in this process against a reference.

    python benchmarks/bench_data.py                       # stdlib, site-packages/4, site-packages (~230 MB here)
    python benchmarks/bench_data.py --sources stdlib --quarter ''   # the quick check

Expected run time on 2 quiet cores: about 10 minutes with the defaults (one round; the whole site-packages corpus
takes most of it). Each whole-pipeline run is a fresh interpreter (its start-up counts: it is what a user waits for).
Per-stage MB/s of the streaming pipeline are per task-second (its tasks' stage seconds added up), of the in-memory
one per second of the stage's wall time (its pool works on both cores).

Per stage, every document of the corpus goes through the stage alone in this process (CPU seconds and wall seconds,
so a shared machine's noise shows as wall >> CPU). References, same documents, same run:
  - reading:        bytes from disk vs decoding them (the floor for everything else)
  - edu score:      `ast.parse` alone (the scorer's floor)
  - decontaminate:  Python's `tokenize` module over the same text (what a tokenize-based normalizer would cost)
  - near dedup:     datasketch's own `MinHash.update_batch` over the same shingles (what our numpy signature replaces);
                    the streaming pipeline's signature stage (code-token shingles, 180 hashes) on its own row
  - tokenize:       tiktoken `encode_ordinary_batch` (threads) — that is the stage itself
Then decontamination's false-positive rate on the (benign) standard library.
"""
import argparse
import io
import json
import logging
import sys
import tempfile
import time
import tokenize
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from codelm.data import prepare as P  # noqa: E402
from codelm.data.sources import stdlib_documents  # noqa: E402


def timed(fn, docs) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    for d in docs:
        fn(d)
    return time.process_time() - c0, time.perf_counter() - w0


def row(name: str, mb: float, cpu: float, wall: float, ref: tuple | None = None) -> dict:
    r = {"stage": name, "MB": round(mb, 2), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
         "MB_per_cpu_s": round(mb / max(cpu, 1e-9), 2)}
    if ref:
        ref_name, ref_cpu = ref
        r.update({"reference": ref_name, "ref_cpu_s": round(ref_cpu, 2), "ours_over_ref": round(cpu / ref_cpu, 2)})
    return r


def bench_stages() -> list[dict]:
    import ast

    import numpy as np
    from datasketch import MinHash

    from codelm.data.decontaminate import BENCHMARKS, Decontaminator
    from codelm.data.dedup import ExactDedup, NearDedup, shingle_hashes
    from codelm.data.educational import EduFilter
    from codelm.data.filters import QualityConfig, QualityFilter
    from codelm.data.sources import stdlib_root
    from codelm.tokenizer import get_tokenizer

    docs = list(stdlib_documents())
    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    rows = []
    paths = [stdlib_root() / d.id for d in docs]
    read_cpu, read_wall = timed(lambda p: p.read_bytes(), paths)
    dec_cpu, dec_wall = timed(lambda p: p.read_bytes().decode("utf-8"), paths)
    rows.append(row("read+decode", mb, dec_cpu, dec_wall, ("read bytes", read_cpu)))
    from codelm.data.stages import SizeFilter
    rows.append(row("size", mb, *timed(SizeFilter(1, 10**6).keep, docs)))
    rows.append(row("quality", mb, *timed(QualityFilter(QualityConfig()).keep, docs)))
    parse_cpu, _ = timed(lambda d: ast.parse(d.text), docs)
    rows.append(row("edu_score", mb, *timed(EduFilter(0.2).keep, docs), ("ast.parse", parse_cpu)))
    rows.append(row("exact_dedup", mb, *timed(ExactDedup().keep, docs)))
    near = NearDedup()

    def datasketch_minhash(d):
        m = MinHash(num_perm=128)
        m.update_batch([int(h).to_bytes(8, "little") for h in shingle_hashes(d.text)])
    ref_cpu, _ = timed(datasketch_minhash, docs)
    rows.append(row("near_dedup", mb, *timed(near.keep, docs), ("datasketch MinHash.update_batch", ref_cpu)))
    from codelm.data.pipeline import CodeMinhashSignature, minhash_config
    with tempfile.TemporaryDirectory() as tmp:
        signer = CodeMinhashSignature(tmp, minhash_config(P.DataConfig()))
        rows.append(row("near_dedup signatures (streaming)", mb,
                        *timed(lambda d: signer.signature(signer.get_shingles(d.text)), docs)))
    t0 = time.process_time()
    decon = Decontaminator(list(BENCHMARKS))
    build = time.process_time() - t0

    def py_tokenize(d):
        try:
            for _ in tokenize.generate_tokens(io.StringIO(d.text).readline):
                pass
        except (tokenize.TokenError, SyntaxError):
            pass
    tok_cpu, _ = timed(py_tokenize, docs)
    flagged = []
    cpu, wall = timed(lambda d: flagged.append(d.id) if decon.analyze(d) else None, docs)
    r = row("decontaminate", mb, cpu, wall, ("python tokenize module", tok_cpu))
    r.update({"index_build_cpu_s": round(build, 2), "stdlib_flagged": len(flagged),
              "stdlib_false_positive_rate": round(len(flagged) / len(docs), 4), "flagged_ids": flagged[:10]})
    rows.append(r)
    tok = get_tokenizer("cl100k_base:16384")
    texts = [d.text for d in docs]
    c0, w0 = time.process_time(), time.perf_counter()
    tok.encode_batch(texts, num_threads=2)
    rows.append(row("tokenize (2 threads)", mb, time.process_time() - c0, time.perf_counter() - w0))
    del np
    return rows


def tree_memory(pid: int) -> tuple[int, int]:
    """(resident, proportional) bytes of a process and all its descendants, from /proc (no psutil needed). RSS
    counts pages a forked task shares with its parent once per process; PSS splits each shared page among its
    sharers, so it adds up to what the tree really holds."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * 4096
        except (OSError, IndexError, ValueError):
            continue
    total = pss = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            pss += rss.get(p, 0)
        stack += children.get(p, [])
    return total, pss


def run_measured(code: str) -> tuple[float, int, int, dict, float]:
    """Run `code` in a fresh interpreter; (wall seconds, peak resident and peak proportional bytes of its process
    tree, its JSON result, CPU seconds of the whole tree)."""
    import resource
    import subprocess
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).resolve().parent.parent))
    peak = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak, peak_pss = max(peak, rss), max(peak_pss, pss)
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"benchmark run failed ({proc.returncode}): {code}")
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every descendant, reaped by its parent, counts here
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, peak, peak_pss, json.loads(out.strip().splitlines()[-1]), cpu


def bench_prepare(source: str, mode: str, tasks: int, workers: int) -> dict:
    """One whole `codelm data prepare` of `source`: mode 'streaming' (datatrove, --tasks) or 'in-memory' (the
    earlier pipeline, kept as prepare_in_memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "shards")
        fn = "prepare" if mode == "streaming" else "prepare_in_memory"
        code = (f"import json; from codelm.data import prepare as P; "
                f"i = P.{fn}(P.DataConfig(source={source!r}, out={out!r}, tasks={tasks}, workers={workers}, "
                f"progress_seconds=0)); print(json.dumps(i['manifest']))")
        wall, peak, peak_pss, m, cpu = run_measured(code)
        timings = json.loads((Path(out) / "timings.json").read_text())
    return {"mode": mode, "tasks": tasks, "workers": workers, "wall_s": round(wall, 1),
            "peak_rss_mb": round(peak / 2**20), "peak_pss_mb": round(peak_pss / 2**20), "MB_in": round(m["input"]["bytes"] / 1e6, 2),
            "MB_per_s": round(m["input"]["bytes"] / 1e6 / wall, 3), "docs_in": m["input"]["docs"],
            "kept": {s["name"]: s["docs_out"] for s in m["stages"]}, "docs_out": m["documents"],
            "stage_mb_per_s": {t["name"]: t["mb_per_s"] for t in timings["stages"]},
            "cpu_s": round(cpu, 1), "runs_s": timings.get("runs", {})}


def quarter_corpus(source: str, tmp: Path) -> str:
    """Every fourth file of a directory-like source, copied into tmp (the 1x corpus of the memory comparison)."""
    import shutil

    from codelm.data.sources import _source_files
    for i, (root, file, prefix, _) in enumerate(_source_files(source, (".py",))):
        if i % 4 == 0:
            target = tmp / (prefix + str(file.relative_to(root)))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    return str(tmp)


def print_run(label: str, r: dict) -> None:
    runs = f"  runs (wall s) {r['runs_s']}" if r.get("runs_s") else ""
    print(f"{label:26s} {r['wall_s']:>7.1f}s {r['MB_per_s']:>7.3f} MB/s  CPU {r['cpu_s']:>6.1f}s  peak RSS "
          f"{r['peak_rss_mb']:>5} MB (PSS {r['peak_pss_mb']:>5} MB)  "
          f"kept {r['kept']}  per-stage MB/s {r['stage_mb_per_s']}{runs}", flush=True)


def _scaling_work(docs: list[str], out=None) -> float:
    import ast
    t0 = time.perf_counter()
    for text in docs:  # what the pipeline's tasks spend most on: parsing, and dicts of tokens
        try:
            ast.parse(text)
        except (SyntaxError, ValueError):
            pass
        counts: dict = {}
        for tok in text.split():
            counts[tok] = counts.get(tok, 0) + 1
    seconds = time.perf_counter() - t0
    if out is not None:
        out.put(seconds)
    return seconds


def machine_scaling(rounds: int = 3) -> float:
    """This machine's ceiling for "2 tasks / 1 task": the same pure-Python work alone, then in two processes at once
    (each process's own work seconds, so forking and exiting do not count; best of `rounds`, as a short probe read
    1.5x once where reruns read 2.0x). Two cores that share a physical core or its caches give less than 2x whatever
    the pipeline does; the 2-task goal reads against this."""
    import multiprocessing
    docs = [d.text for d in stdlib_documents()][:300]
    _scaling_work(docs)
    alone = min(_scaling_work(docs) for _ in range(rounds))
    ctx = multiprocessing.get_context("fork")
    both = float("inf")
    for _ in range(rounds):
        q = ctx.Queue()
        procs = [ctx.Process(target=_scaling_work, args=(docs, q)) for _ in range(2)]
        for p in procs:
            p.start()
        seconds = [q.get() for _ in procs]
        for p in procs:
            p.join()
        both = min(both, max(seconds))
    return round(2 * alone / both, 2)


MODES = {"in-memory": ("in-memory", 1, 2), "streaming 1 task": ("streaming", 1, 1),
         "streaming 2 tasks": ("streaming", 2, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="stdlib,site-packages",
                    help="corpora for the whole-pipeline runs (comma-separated sources)")
    ap.add_argument("--quarter", default="site-packages",
                    help="of these directory-like sources, also a quarter (every fourth file), run before the whole: "
                         "the 1x and 4x corpora of the memory comparison ('' = none)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of in-memory / streaming runs")
    ap.add_argument("--skip-stages", action="store_true", help="no per-stage references")
    ap.add_argument("--skip-prepare", action="store_true", help="only the per-stage numbers")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    results = {"stages": [], "prepare": [], "memory": {}}
    if not args.skip_stages:
        rows = results["stages"] = bench_stages()
        print(f"{'stage':34s} {'MB':>6s} {'cpu s':>6s} {'wall s':>7s} {'MB/cpu-s':>9s}  reference (cpu s, ours/ref)")
        for r in rows:
            ref = f"{r['reference']} ({r['ref_cpu_s']}s, x{r['ours_over_ref']})" if "reference" in r else ""
            print(f"{r['stage']:34s} {r['MB']:>6.2f} {r['cpu_s']:>6.2f} {r['wall_s']:>7.2f} {r['MB_per_cpu_s']:>9.2f}  "
                  f"{ref}")
        decon = next(r for r in rows if r["stage"] == "decontaminate")
        print(f"decontamination on the benign stdlib: {decon['stdlib_flagged']} of {len(list(stdlib_documents()))} "
              f"flagged ({decon['stdlib_false_positive_rate']:.2%}) {decon['flagged_ids']}", flush=True)
    if not args.skip_prepare:
        results["machine_scaling"] = machine_scaling()
        print(f"two processes at once vs one (pure-Python work, wall): {results['machine_scaling']}x", flush=True)
        quarters = {q.strip() for q in args.quarter.split(",") if q.strip()}
        with tempfile.TemporaryDirectory() as tmp:
            corpora = []
            for source in (s.strip() for s in args.sources.split(",") if s.strip()):
                if source in quarters:
                    corpora.append((f"{source}/4", quarter_corpus(source, Path(tmp) / "quarter"), source))
                corpora.append((source, source, None))
            best_of: dict[str, dict] = {}
            for label, source, whole in corpora:
                runs = {m: [] for m in MODES}
                for _ in range(args.rounds):  # alternating, so load on a shared machine hits all alike
                    for mode, (kind, tasks, workers) in MODES.items():
                        runs[mode].append(bench_prepare(source, kind, tasks, workers))
                print(f"whole pipeline on {label} (wall, end-to-end MB/s, peak RSS of the process tree):")
                best = best_of[label] = {m: min(rs, key=lambda r: r["wall_s"]) for m, rs in runs.items()}
                for mode, r in best.items():
                    print_run(f"  {mode}", r)
                    results["prepare"].append({"source": label, "label": mode, **r})
                two, one, old = (best[k]["MB_per_s"] for k in ("streaming 2 tasks", "streaming 1 task", "in-memory"))
                c1, c2 = best["streaming 1 task"]["cpu_s"], best["streaming 2 tasks"]["cpu_s"]
                print(f"  streaming 2 tasks / in-memory throughput: {two / old:.2f}x (goal >= 1); "
                      f"2 tasks / 1 task: {two / one:.2f}x (goal >= 1.7; this machine's ceiling for two processes: "
                      f"{results['machine_scaling']}x; CPU seconds 2 tasks / 1 task: {c2 / max(c1, 1e-9):.2f})",
                      flush=True)
            for label, _, whole in corpora:
                if whole is None or whole not in best_of:
                    continue
                one, four = best_of[label], best_of[whole]
                print(f"memory: {label} ({one['streaming 2 tasks']['MB_in']} MB, 1x) vs {whole} "
                      f"({four['streaming 2 tasks']['MB_in']} MB, 4x):")
                ratios = {}
                for mode in MODES:
                    ratios[mode] = round(four[mode]["peak_rss_mb"] / max(1, one[mode]["peak_rss_mb"]), 2)
                    pss = four[mode]["peak_pss_mb"] / max(1, one[mode]["peak_pss_mb"])
                    print(f"  {mode:20s} peak RSS {one[mode]['peak_rss_mb']:>5} MB -> {four[mode]['peak_rss_mb']:>5} MB:"
                          f" {ratios[mode]:.2f}x" + ("" if mode == "in-memory" else " (goal <= 1.25)")
                          + f"; PSS {one[mode]['peak_pss_mb']} -> {four[mode]['peak_pss_mb']} MB: {pss:.2f}x")
                results["memory"][whole] = ratios
    print(f"benchmark wall time: {time.perf_counter() - t_start:.0f}s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
