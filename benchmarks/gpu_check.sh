#!/usr/bin/env bash
# GPU check, under 5 minutes on one CUDA GPU: train the tiny preset in bf16, print training throughput and MFU (bf16,
# tiny and small presets, eager and compiled), evaluate the model with the codelm and transformers backends on a slice
# of HumanEval (and vLLM where .venv-vllm exists), print generation tokens/s.
# Uses whatever torch is installed (GPU machines may have no network and another torch build).
#   benchmarks/gpu_check.sh [PYTHON]        (default .venv/bin/python, else python3)
# Without CUDA it says so and exits 3 after the checks a CPU can do (imports, packaged data, the sandbox).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
CODELM="$PY -m codelm.cli"
OUT=${GPU_CHECK_OUT:-$(mktemp -d /tmp/codelm-gpu-check.XXXXXX)}
TASKS=${GPU_CHECK_TASKS:-20}
export HF_HUB_OFFLINE=1
echo "== environment"
$PY - <<'PY'
import torch, importlib.util
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "| bf16", torch.cuda.is_bf16_supported())
for name in ("transformers", "vllm"):
    print(name, "importable" if importlib.util.find_spec(name) else "missing")
PY
echo "== packaged benchmark data and the sandbox (CPU checks)"
$PY -c "from codelm import benchdata; h = benchdata.packaged_hashes(); bad = [n for n, d in h.items() if benchdata.content_sha256(benchdata.PACKAGE_DIR / n) != d]; print(len(h), 'packaged files', 'BAD: ' + str(bad) if bad else 'ok'); raise SystemExit(1 if bad else 0)"
$PY -m sandbox check | tail -3
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: skipping training and the GPU evaluations (exit 3)"
  exit 3
fi
echo "== train the tiny preset in bf16 ($OUT/run)"
$CODELM data prepare --out "$OUT/data" >/dev/null
$CODELM train --data "$OUT/data" --out "$OUT/run" --preset tiny --steps 200 --batch-size 64 --precision bf16 \
  --device cuda --eval-every 0 --save-every 200 --log-every 50 2>&1 | grep -E "step|MFU|tok/s" | tail -4
CKPT=$(ls -d "$OUT"/run/checkpoints/step_* | tail -1)
echo "== training throughput, bf16: tiny and small presets, default (eager) and --compile true"
# 60 steps each; the rate and MFU of the last logged stretch (steps 41-60: past the compile and warm-up steps)
for preset in tiny small; do
  for compile in false true; do
    run="$OUT/speed-$preset-compile-$compile"
    $CODELM train --data "$OUT/data" --out "$run" --preset $preset --steps 60 --batch-size 16 --precision bf16 \
      --device cuda --compile $compile --eval-every 0 --save-every 0 --log-every 20 >/dev/null 2>&1 \
      || { echo "train $preset bf16 compile=$compile: FAILED (see $run)"; continue; }
    $PY - "$run/metrics.jsonl" "$preset" "$compile" <<'PY'
import json, sys
path, preset, compiled = sys.argv[1:]
last = [r for r in map(json.loads, open(path)) if r.get("kind") == "train"][-1]
print(f"train {preset:5s} bf16 compile={compiled:5s} {last['tok_s']:>12,.0f} tok/s  MFU {100 * last['mfu']:5.1f}%"
      f"  (step {last['step']})")
PY
  done
done
echo "== export it as a Llama directory (both model backends load the same weights)"
$CODELM export --hf "$OUT/hf" "$CKPT" >/dev/null
for backend in codelm transformers; do
  echo "== HumanEval, first $TASKS tasks, n=10 T=0.8, --backend $backend"
  /usr/bin/time -f "wall %e s" $CODELM eval humaneval "$OUT/hf" --backend $backend --device cuda --dtype bfloat16 \
    --limit "$TASKS" -k 1,10 --n 10 --max-new-tokens 128 --batch-size 32 --output "$OUT/eval-$backend" 2>&1 | tail -4
done
if [ -x .venv-vllm/bin/python ]; then
  echo "== HumanEval, first $TASKS tasks, --backend vllm"
  /usr/bin/time -f "wall %e s" .venv-vllm/bin/python -m codelm.cli eval humaneval "$OUT/hf" --backend vllm \
    --dtype bfloat16 --limit "$TASKS" -k 1,10 --n 10 --max-new-tokens 128 --output "$OUT/eval-vllm" 2>&1 | tail -4
else
  echo "== vLLM: no .venv-vllm here (make vllm-env), skipped"
fi
echo "== generation tokens/s, codelm vs transformers backend, batch 1 and 8"
(cd benchmarks && "../$PY" bench_eval.py --generation --model "$OUT/hf" --device cuda --rounds 3 --new-tokens 128) \
  2>&1 | grep -v Warning
echo "outputs: $OUT"
