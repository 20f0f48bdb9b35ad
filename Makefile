# Two entry points for a newcomer: `make demo` (the main job on the embedded
# digits data) and `make test` (the whole suite). Each builds its own virtual
# environment on first use; torch is pinned to the local CPU build through
# constraints.txt so nothing pulls the CUDA wheels.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
EXTRAS ?= test,notebook,vtk

.PHONY: venv demo test bench gpu-check clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --user --name geomkit >/dev/null 2>&1 || true
	touch $(STAMP)

demo: venv
	$(BIN)/geomkit study quick --out runs/quick

test: venv
	$(BIN)/python -m pytest -q

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
	rm -rf $(VENV) runs build *.egg-info
