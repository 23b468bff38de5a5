# Two entry points (see README): `make run` runs the main job on the bundled model, `make test` the tests.
# Both build .venv first. The CPU build of torch is installed before anything else so no dependency
# can pull a multi-GB CUDA build; on a GPU machine: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python

.PHONY: setup sandbox phone run test bench clean
setup: $(VENV)/.installed sandbox

# bubblewrap isolates model-written HumanEval programs (objectives/_sandbox.py). Installed when missing if
# this runs as root with apt-get (CI, containers); otherwise one line says how (or use --unsafe-exec).
sandbox:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	  else echo "bubblewrap (bwrap) missing and not installable here: run 'sudo apt-get install bubblewrap' (HumanEval is refused without it unless --unsafe-exec)"; fi; }

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# llama.cpp on this host (llama-cpp-python, the `phone` extra) builds from source, ~7 min on 2 cores. Only
# validate, submit and their tests run GGUF files, so `make run` never waits for it; `validate --device emulated`
# and `submit` build it themselves the first time (search/_phone.py).
phone: $(VENV)/.phone
$(VENV)/.phone: $(VENV)/.installed
	@$(PY) -c "import llama_cpp" 2>/dev/null || { \
	  echo "building llama-cpp-python (the phone extra, ~7 min on 2 cores, once): validate, submit and their tests run GGUF files with llama.cpp"; \
	  $(PY) -m pip install -q -e ".[phone]"; }
	touch $@

run: setup
	$(PY) -m search launch $(ARGS)

# Two pytest workers (pytest-xdist), one test file each at a time (a file's module fixtures are built once), one
# OpenMP thread each (tests/conftest.py): the suite keeps both cores busy (bench/results/suite_timing.json).
# TEST_WORKERS=1 runs it serially.
TEST_WORKERS ?= 2
test: setup phone
	$(PY) -m pytest -q $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(ARGS)

clean:
	rm -rf $(VENV) runs
