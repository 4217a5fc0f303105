# Two commands matter:  `make lab`  and  `make test`.  Everything else is a helper.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
KERNEL  := dlsys-perf
PORT    ?= 8888
# JupyterLab refuses to start as root (CI runs as root) unless told.
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --ServerApp.allow_root=True)
# After each call, OpenBLAS's worker threads busy-wait for about 0.1 s (2^28 cycles) for the next
# one. On a 2-core laptop that spinning takes a core from the numpy copy that follows the GEMM
# (im2col, col2im): 4 (2^4 cycles) makes them sleep at once. Measured: docs/benchmarks.md.
export OPENBLAS_THREAD_TIMEOUT ?= 4
NBVAL   := --nbval --nbval-current-env --nbval-cell-timeout=300 \
           --nbval-sanitize-with tests/nbval_sanitize.cfg

.PHONY: setup lab lint test test-cpu-kernels test-unit test-notebooks notebooks bench exercises grade site clean

# The environment: rebuilt only when the pins or the package metadata change,
# so a second `make lab` starts in seconds.
$(STAMP): requirements.txt requirements-site.txt pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if (3, 10) <= v[:2] <= (3, 13) else "This course needs Python 3.10 to 3.13; found %d.%d. Set PYTHON=/path/to/python3.x" % v[:2])'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-site.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# The course kernel, with the environment it runs best in (re-registered when this file changes).
$(VENV)/.kernel: $(STAMP) Makefile
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) \
	    --display-name "Python (DL Systems Performance)" --env OPENBLAS_THREAD_TIMEOUT $(OPENBLAS_THREAD_TIMEOUT)
	@touch $@

setup: $(STAMP) $(VENV)/.kernel

lab: setup
	$(PY) -m jupyterlab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	    --ServerApp.port=$(PORT) $(ROOT_FLAG)

# nbgrader is an optional extra (grading does not need it); `make test` installs it so that the
# check that nbgrader accepts solutions/ as source notebooks runs instead of skipping.
$(VENV)/.nbgrader: $(STAMP)
	$(PY) -m pip install --quiet -e '.[nbgrader]'
	@touch $@

# Tests whose results depend on float rounding (training runs, comparisons with PyTorch) run again
# with PyTorch forced onto other CPU kernels: a claim that holds for one instruction set only fails
# here, not on a student's laptop. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE stay as the machine sets them.
FLOAT_TESTS := tests/test_lr_schedules.py tests/test_lenet.py tests/test_compression.py tests/test_downpour.py \
               tests/test_ddp.py tests/test_conv.py tests/test_pooling.py tests/test_layers.py tests/test_optim.py
CPU_KERNELS := avx2 default

test: setup $(VENV)/.nbgrader lint
	$(PY) -m pytest -q tests notebooks solutions $(NBVAL)
	$(MAKE) --no-print-directory test-cpu-kernels

# The instruction sets run side by side, a core each (two runs that each start a thread per core
# slow each other's small torch calls many times over); each prints its log when done.
test-cpu-kernels: setup
	@logs=$$(mktemp -d); pids=""; \
	for cap in $(CPU_KERNELS); do \
	    ATEN_CPU_CAPABILITY=$$cap OMP_NUM_THREADS=1 COURSE_LIB_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider \
	        --basetemp=$$logs/tmp-$$cap $(FLOAT_TESTS) -m "not browser" > $$logs/$$cap.log 2>&1 & \
	    pids="$$pids $$!"; \
	done; \
	status=0; set -- $(CPU_KERNELS); \
	for pid in $$pids; do \
	    wait $$pid || status=1; \
	    echo "== the float-dependent tests again with ATEN_CPU_CAPABILITY=$$1"; cat $$logs/$$1.log; shift; \
	done; \
	rm -rf $$logs; exit $$status

# ruff (configured in pyproject.toml) over the code, the tests and every notebook
lint: setup
	$(VENV)/bin/ruff check .

test-unit: setup
	$(PY) -m pytest -q tests -m "not slow and not browser"

test-notebooks: setup
	$(PY) -m pytest -q notebooks solutions $(NBVAL)

bench: setup
	$(PY) -m benchmarks

notebooks: setup
	$(PY) tools/execute_notebooks.py notebooks/*.ipynb solutions/*.ipynb

exercises: setup
	$(PY) -m grader.build solutions exercises

# make grade EXERCISE=02_conv_dilation_groups_exercise SUBMISSIONS=path/to/submitted [J=2] [ROSTER=roster.csv]
J ?= 2
grade: setup
	@if [ -z "$(EXERCISE)" ] || [ -z "$(SUBMISSIONS)" ]; then \
	    echo "usage: make grade EXERCISE=02_conv_dilation_groups_exercise SUBMISSIONS=folder/ [J=2] [ROSTER=roster.csv]"; \
	    echo "  (SUBMISSIONS holds one STUDENT.ipynb or one STUDENT/ folder per student)"; exit 2; fi
	$(PY) -m grader solutions/$(basename $(notdir $(EXERCISE))).ipynb $(SUBMISSIONS) \
	    --out grades/$(basename $(notdir $(EXERCISE))) -j $(J) $(if $(ROSTER),--roster $(ROSTER))

# The course as a static website in site/ (README as home page, the lessons from their stored
# outputs, the exercises, docs/): offline, any static host serves it. docs/instructors.md says how.
SITE ?= site
site: setup
	$(PY) tools/build_site.py $(SITE)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info site _build
