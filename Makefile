# Two entry points for a newcomer: `make demo` (the main job on the embedded
# digits data) and `make test` (the whole suite). Each builds its own virtual
# environment on first use; torch is pinned to the local CPU build through
# constraints.txt so nothing pulls the CUDA wheels.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
EXTRAS ?= test,notebook,vtk

.PHONY: venv demo test bench clean

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

clean:
	rm -rf $(VENV) runs build *.egg-info
