# Two entry points for a newcomer: `make demo` (the main job on the embedded
# digits data) and `make test` (the whole suite). Each builds its own virtual
# environment on first use; torch is pinned to the local CPU build through
# constraints.txt so nothing pulls the CUDA wheels.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
EXTRAS ?= test,notebook,vtk

.PHONY: venv venv-timm demo test test-timm bench gpu-check clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --user --name geomkit >/dev/null 2>&1 || true
	touch $(STAMP)

# timm needs torchvision, which cannot load beside the CPU torch 2.13.0 above, so the
# timm tests (tests/test_timm.py) get their own venv: torch 2.14.1 + torchvision 0.29.1
# from the local wheel store (pinned in constraints-timm.txt; a CUDA build of torch, run
# on the CPU), then geomkit -e with its test extras resolved against those pins.
TIMM_VENV  ?= .venv-timm
TIMM_BIN    = $(TIMM_VENV)/bin
TIMM_STAMP  = $(TIMM_VENV)/.installed

venv-timm: $(TIMM_STAMP)

$(TIMM_STAMP): setup.cfg pyproject.toml constraints-timm.txt
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(TIMM_BIN)/python -m pip install -q -c constraints-timm.txt torch torchvision timm
	$(TIMM_BIN)/python -m pip install -q -c constraints-timm.txt -e ".[test,timm]"
	touch $(TIMM_STAMP)

demo: venv
	$(BIN)/geomkit study quick --out runs/quick

test: venv
	$(BIN)/python -m pytest -q

# Only the timm tests, in the timm venv; GEOMKIT_REQUIRE_TIMM=1 turns a failed
# `import timm` into an error instead of a skip.
test-timm: venv-timm
	GEOMKIT_REQUIRE_TIMM=1 $(TIMM_BIN)/python -m pytest -q tests/test_timm.py

bench: venv
	$(BIN)/python benchmarks/hessian.py
	$(BIN)/python benchmarks/ntk.py
	$(BIN)/python benchmarks/landscape.py

# The GPU check (benchmarks/gpu_check.py): on a CUDA machine it runs the CUDA half of the
# device-parametrized tests and times every GPU number in <= 8 minutes, writing
# $(GPU_OUT)/<stage>.json and summary.md as it goes.  It needs no venv and installs
# nothing: the GPU machine's own Python (torch, h5py, scipy, ...) runs it from this
# checkout.  DRY=1: the same stages at toy sizes on the CPU (the suite runs this too).
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_OUT    ?= runs/gpu-check

gpu-check:
	@PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) benchmarks/gpu_check.py \
		--out $(GPU_OUT) $(if $(DRY),--dry-run)

clean:
	rm -rf $(VENV) $(TIMM_VENV) runs build *.egg-info
