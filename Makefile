# The two commands a fresh machine needs: `make run` and `make test` (both do all set-up).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run chat test install conformance bench bench-hub lint typecheck clean vendor-yjs

$(BIN)/.installed: pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

# `make run` needs only the runtime extras of the demos: pycrdt (notes) and uvloop.
$(BIN)/.installed-run: pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[demo,speed]'
	touch $@

run: $(BIN)/.installed-run
	$(BIN)/pulsewire serve --demo --host $(HOST) --port $(PORT)

# The tutorial's chat app (docs/tutorial.md): pulsewire, FastAPI and uvicorn[standard].
$(BIN)/.installed-chat: pyproject.toml setup.py examples/chat/requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . -r examples/chat/requirements.txt
	touch $@

chat: $(BIN)/.installed-chat
	$(BIN)/uvicorn examples.chat.app:app --host $(HOST) --port $(PORT)

# The whole suite with the C accelerator, then the protocol-level suites and Autobahn
# categories 1-10 again on the pure-Python path (PULSEWIRE_NO_EXTENSIONS=1).
PURE_PYTHON_TESTS := tests/protocol tests/aio tests/sync tests/interop/test_websockets_interop.py tests/conformance
PURE_PYTHON_CASES := 1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	PULSEWIRE_NO_EXTENSIONS=1 PULSEWIRE_AUTOBAHN_CASES='$(PURE_PYTHON_CASES)' \
		$(BIN)/python -m pytest -q $(PURE_PYTHON_TESTS) $(PYTEST_ARGS)

# The documentation site into site/ (mkdocs.yml); --strict: a warning (a broken link or
# anchor, a docstring mkdocstrings cannot render) fails. tests/docs/test_site.py runs the
# same build in `make test`. NO_MKDOCS_2_WARNING quiets Material's end-of-life banner.
.PHONY: docs
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

conformance: install
	PULSEWIRE_AUTOBAHN_FULL=1 $(BIN)/python -m pytest tests/conformance -v -s

vendor-yjs: install
	$(BIN)/python scripts/vendor_yjs.py

bench: install
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(MAKE) bench-hub

# docs/benchmarks-hub.md and .png: fan-out against the peers at 1k/5k/10k subscribers,
# cross-node with a rate-limited publisher (backpressure off/on, python-socketio's Redis
# manager), closed-loop cross-node throughput, where the node's time goes (py-spy); then
# the page from benchmarks/results/.
HUB_SIZES ?= 1000 5000 10000
bench-hub: install
	for n in $(HUB_SIZES); do \
		$(BIN)/python benchmarks/hub_peers.py --subscribers $$n --client-procs 4 \
			--out benchmarks/results/hub_peers_$$n.json || exit 1; \
	done
	$(BIN)/python benchmarks/backpressure.py
	$(BIN)/python benchmarks/fanout_hub.py > /dev/null
	$(BIN)/python benchmarks/profile_hub.py --subscribers 10000
	$(BIN)/python benchmarks/hub_report.py

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info reports test-output site
