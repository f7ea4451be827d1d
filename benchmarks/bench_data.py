"""Data pipeline throughput: MB/s per stage on the default corpus (the standard library), with references measured
in the same run, the whole default `codelm data prepare` wall time, and what each stage removed.

    python benchmarks/bench_data.py [--workers 2] [--skip-prepare]

Per stage, every document of the corpus goes through the stage alone in this process (CPU seconds and wall seconds,
so a shared machine's noise shows as wall >> CPU). References, same documents, same run:
  - reading:        bytes from disk vs decoding them (the floor for everything else)
  - edu score:      `ast.parse` alone (the scorer's floor)
  - decontaminate:  Python's `tokenize` module over the same text (what a tokenize-based normalizer would cost)
  - near dedup:     datasketch's own `MinHash.update_batch` over the same shingles (what our numpy signature replaces)
  - tokenize:       tiktoken `encode_ordinary_batch` (threads) — that is the stage itself
Then decontamination's false-positive rate on the (benign) standard library, and the whole default pipeline.
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
    rows.append(row("size", mb, *timed(P.SizeFilter(1, 10**6).keep, docs)))
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


def bench_prepare(workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        index = P.prepare(P.DataConfig(out=str(Path(tmp) / "stdlib"), num_workers=workers, progress_seconds=0))
        wall = time.perf_counter() - t0
        timings = json.loads((Path(tmp) / "stdlib" / "timings.json").read_text())
    m = index["manifest"]
    return {"workers": workers, "wall_s": round(wall, 1), "timings": timings,
            "removed": {s["name"]: s["removed"] for s in m["stages"]},
            "docs_in": m["input"]["docs"], "MB_in": round(m["input"]["bytes"] / 1e6, 2),
            "docs_out": m["documents"], "tokens": m["tokenization"]["tokens"],
            "MB_out": round(sum(m["tokenization"]["bytes"].values()) / 1e6, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="2,1", help="worker counts for the whole-pipeline run (comma-separated)")
    ap.add_argument("--skip-prepare", action="store_true", help="only the per-stage numbers")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = bench_stages()
    print(f"{'stage':22s} {'MB':>6s} {'cpu s':>6s} {'wall s':>7s} {'MB/cpu-s':>9s}  reference (cpu s, ours/ref)")
    for r in rows:
        ref = f"{r['reference']} ({r['ref_cpu_s']}s, x{r['ours_over_ref']})" if "reference" in r else ""
        print(f"{r['stage']:22s} {r['MB']:>6.2f} {r['cpu_s']:>6.2f} {r['wall_s']:>7.2f} {r['MB_per_cpu_s']:>9.2f}  "
              f"{ref}")
    decon = next(r for r in rows if r["stage"] == "decontaminate")
    print(f"decontamination on the benign stdlib: {decon['stdlib_flagged']} of {len(list(stdlib_documents()))} "
          f"flagged ({decon['stdlib_false_positive_rate']:.2%}) {decon['flagged_ids']}")
    results = {"stages": rows, "prepare": []}
    if not args.skip_prepare:
        for w in (int(x) for x in args.workers.split(",")):
            p = bench_prepare(w)
            results["prepare"].append(p)
            print(f"default `codelm data prepare` with {w} worker(s): {p['wall_s']}s wall, {p['docs_in']} docs "
                  f"{p['MB_in']} MB in -> {p['docs_out']} docs {p['MB_out']} MB, tokens {p['tokens']}")
            print(f"  removed: {json.dumps(p['removed'])}")
            print(f"  per stage (wall): " + ", ".join(f"{s['name']} {s['seconds']}s ({s['mb_per_s']} MB/s)"
                                                        for s in p["timings"]["stages"])
                  + f", tokenize {p['timings']['tokenize']['seconds']}s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
