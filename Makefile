# Set-up and the two everyday commands. `make verify` and `make test` each create .venv on
# first use: on a machine without an NVIDIA GPU they install the CPU build of torch first
# (TORCH_CPU; on raspicl's own machines that wheel lies on disk), then raspicl with its dev
# extra (which brings transformers and transformer-lens for raspicl.interop; both keep the
# torch installed first, so no CUDA build is pulled in). The package itself only asks for
# torch>=2.1, so users elsewhere pick their own build.
PYTHON ?= python3
VENV ?= .venv
TORCH_CPU ?= torch==2.13.0
BIN := $(VENV)/bin
# The suite runs in this many pytest-xdist workers, one torch and BLAS thread each: its CPU time
# is 13-15 minutes on raspicl's 2-core machine, so two workers keep it near half that.
# Work is handed out as workers free up (worksteal); TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: setup verify test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install -q torch; \
	else \
	    $(BIN)/python -m pip install -q "$(TORCH_CPU)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# One thread, as for `test`: raspicl's own default (--threads), and BLAS's, which numpy reads
# when it loads.
verify: setup
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/raspicl verify --threads 1

# One thread each for torch (tests/conftest.py) and BLAS: small models on a shared machine run
# many times slower with more (oversubscription). HF_HUB_OFFLINE: the interop tests load local
# directories only, and must never reach for the HuggingFace hub.
test: setup
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 \
	    $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: setup
	$(BIN)/ruff check raspicl programs tests bench

clean:
	rm -rf $(VENV)
