# make test: install what is missing, then lint and run the default suite (all but the tests
#   marked slow or cuda; minutes). make test-all: everything, as CI runs it (.ci/run).
# make demo: train on the embedded synthetic figures (128x128, CPU, about 5 minutes), translate
#   held-out pairs and print the warp L1 before and after training (demo.py).
# make pix2pixhd-demo: train pix2pixHD with its coarse-to-fine recipe on the embedded synthetic scenes
#   (64x64, CPU, about a minute), cluster its instance features, print the held-out L1 before and
#   after training and draw label maps with three feature centres (demo_pix2pixhd.py).
# make photo-demo: match a photo to a rotated, scaled and shifted copy of itself and rebuild it.
PYTHON ?= python3
STAMP := build/.installed
# The tests also need cocosnet_ops._C_emulated: the CUDA kernels on a CPU emulator
# (COCOSNET_EMULATED_CUDA=1, tests/test_emulated_cuda.py). The demos do without its build time.
TEST_STAMP := build/.installed-with-emulator
SOURCES := setup.py pyproject.toml $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
PIP_INSTALL := $(PYTHON) -m pip install -q --no-build-isolation -e ".[test,train]"

.PHONY: install install-test test test-all lint demo pix2pixhd-demo photo-demo bench

# torch==2.13.0 only when no torch is installed, so a user's CUDA build of torch is kept.
define install_prerequisites
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -q --upgrade "setuptools>=77" wheel ninja
endef

$(STAMP): $(SOURCES)
	$(install_prerequisites)
	$(PIP_INSTALL)
	@mkdir -p build && touch $(STAMP)

# Everything $(STAMP) installs, and the emulator's extension.
$(TEST_STAMP): $(SOURCES)
	$(install_prerequisites)
	COCOSNET_EMULATED_CUDA=1 $(PIP_INSTALL)
	@mkdir -p build && touch $(STAMP) $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

lint: install
	$(PYTHON) -m ruff check .

# Two workers. In test-all the slow whole-model Inductor compilation (tests/test_compile_model.py,
# 15-20 minutes) is scheduled first (tests/conftest.py) and the other worker runs the rest meanwhile.
test: install-test lint
	$(PYTHON) -m pytest -q -n 2 -m "not slow and not cuda" --durations=10

test-all: install-test lint
	$(PYTHON) -m pytest -q -n 2 --durations=10

demo: install
	$(PYTHON) demo.py

pix2pixhd-demo: install
	$(PYTHON) demo_pix2pixhd.py

photo-demo: install
	$(PYTHON) benchmarks/photo_demo.py

bench: install
	$(PYTHON) benchmarks/bench_warp.py
	$(PYTHON) benchmarks/bench_recall.py
	$(PYTHON) benchmarks/bench_knn.py
