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
# benchmark files (MBPP, HumanEval-infilling) for decontamination and evaluation: ../shared/data beside the checkout
export CODELM_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo test test-fast clean help bench-env

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

# benchmark peers that pin their own dependencies (litgpt: huggingface-hub < 1.4), kept apart from the main venv
BENCH_VENV ?= .venv-bench
bench-env: $(BENCH_VENV)/bin/.installed
$(BENCH_VENV)/bin/.installed:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check "$(TORCH)"
	$(BENCH_VENV)/bin/python -m pip install --disable-pip-version-check litgpt==0.5.13
	touch $@

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not docker and not browser"

clean:
	rm -rf $(VENV) data runs .pytest_cache
