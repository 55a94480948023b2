# Every target installs what it needs first, so a fresh clone needs only `make demo` or `make test`:
# Python and npm packages into .venv/ and node_modules/, and (`system`, `services`) what they need
# from the machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo clean

# --- the machine --------------------------------------------------------------------------------
# The Debian packages (`system`) and the running Docker Engine and PostgreSQL (`services`) that
# `make test` needs (FOR=demo: only what `make demo` needs), from .ci/machine.sh. As root they
# install what is missing (apt-get runs only then) and start what does not answer; as another user
# they stop, naming each thing that is missing and the command that adds it. They write nothing
# into the checkout, so `sudo make system services` leaves .venv/ to you. `make test` and
# `make demo` check both first, before anything is installed into .venv/.
FOR ?= test
.PHONY: system services machine-test machine-demo
system:
	@PYTHON=$(PYTHON) bash .ci/machine.sh system $(FOR)
services: system
	@PYTHON=$(PYTHON) bash .ci/machine.sh services $(FOR)
machine-test machine-demo: machine-%:
	@PYTHON=$(PYTHON) bash .ci/machine.sh all $*

# --- Python environment -------------------------------------------------------------------------
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Each part adds what it needs here (node packages, compiled contracts, test images...).
INSTALL_DEPS := $(STAMP)

# --- storage (IPFS) -----------------------------------------------------------------------------
# The independent IPFS implementations the storage tests check the node against, pinned by
# tests/storage/js/package-lock.json: the reference UnixFS importer (CIDs), kubo-rpc-client (the
# RPC API), @ipld/car and ipfs-car (CARs), @helia/verified-fetch (the trustless gateway).
STORAGE_JS_STAMP := tests/storage/js/node_modules/.stamp
$(STORAGE_JS_STAMP): tests/storage/js/package.json tests/storage/js/package-lock.json
	cd tests/storage/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@
INSTALL_DEPS += $(STORAGE_JS_STAMP)

# --- solver (protocol) --------------------------------------------------------------------------
# ethers 6, pinned by tests/solver/js/package-lock.json: the independent JavaScript job creator that
# tests/solver/test_js_client.py runs against a real solver.
SOLVER_JS_STAMP := tests/solver/js/node_modules/.stamp
$(SOLVER_JS_STAMP): tests/solver/js/package.json tests/solver/js/package-lock.json
	cd tests/solver/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@
INSTALL_DEPS += $(SOLVER_JS_STAMP)

.PHONY: storage-js bench-ipfs
storage-js: $(STORAGE_JS_STAMP)

# Add throughput (256 MiB file, 10,000 small files) as a ratio of plain hashlib.sha256.
bench-ipfs: install
	$(BIN)/python bench/ipfs_add.py

# --- chain (contracts) --------------------------------------------------------------------------
# Node tools pinned in contracts/package-lock.json: solc (compiler), OpenZeppelin, anvil (dev chain).
# NOTE: not `npm ci`: the lock lists only the anvil binary packages the registry here serves
# (linux), and `npm ci` refuses a lock without every platform's optional package.
CONTRACTS_STAMP := contracts/node_modules/.stamp
$(CONTRACTS_STAMP): contracts/package.json contracts/package-lock.json
	cd contracts && npm install --no-save --no-audit --no-fund --loglevel=error
	touch $@
INSTALL_DEPS += $(CONTRACTS_STAMP)

.PHONY: contracts contracts-deps contracts-check gas
contracts-deps: $(CONTRACTS_STAMP)

# Compile contracts/src with the pinned solc into lilypad/chain/artifacts/ (shipped in the wheel).
contracts: $(CONTRACTS_STAMP)
	cd contracts && node compile.js

# Fails when the committed artifacts differ from what the sources compile to.
contracts-check: $(CONTRACTS_STAMP)
	cd contracts && node compile.js --check

# Gas per job on a local anvil; the last line is `gas per job: N`.
gas: install
	$(BIN)/python bench/gas.py

# --- module runtime -----------------------------------------------------------------------------
# Docker images that build offline (no registry): the busybox base made with `docker import`, the
# cowsay module and the test fixtures. Needs a running Docker Engine and busybox-static. Built
# again only when one is missing from the engine or a file in its folder changed since the last
# build (the check takes ~20 ms; a build with every layer cached about a second).
OFFLINE_IMAGE_DIRS := module/cowsay $(patsubst %/Dockerfile,%,$(wildcard tests/fixtures/modules/*/Dockerfile))
OFFLINE_IMAGES = lilypad/busybox:local \
	$(shell sed -n 's/^image = "\(.*\)"$$/\1/p' $(OFFLINE_IMAGE_DIRS:=/lilypad_module.toml))
IMAGES_STAMP := $(VENV)/.images-built
IMAGES_FRESH = [ -f $(IMAGES_STAMP) ] \
	&& [ -z "$$(find $(OFFLINE_IMAGE_DIRS) -newer $(IMAGES_STAMP))" ] \
	&& docker image inspect $(OFFLINE_IMAGES) >/dev/null 2>&1

.PHONY: images
images: $(STAMP)
	@$(IMAGES_FRESH) || { set -x; $(BIN)/lilypad module build $(addprefix ./,$(OFFLINE_IMAGE_DIRS)) \
	    && touch $(IMAGES_STAMP); }

# ML modules (sdxl, sdv-pipeline): torch first, pinned to the CPU build on disk (any other torch
# spec pulls a CUDA build of several GB), then the `ml` extra, which that torch already satisfies.
ML_STAMP := $(VENV)/.ml-installed
$(ML_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[ml]'
	touch $(ML_STAMP)

INSTALL_DEPS += $(ML_STAMP)

# --- common targets -----------------------------------------------------------------------------
install: $(INSTALL_DEPS)

# tests/ml runs in parallel (pytest-xdist), one file per worker so that a file's module-scoped jobs
# run once: its jobs are single-threaded torch processes that share no port, and on 2 cores the
# part takes 14 min instead of 23. The rest (local networks, chains, Docker) runs in order.
ML_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
test: machine-test install images
	$(BIN)/pytest --ignore=tests/ml
	$(BIN)/pytest tests/ml -n $(ML_WORKERS) --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: machine-demo install images
	@bash .ci/demo.sh

# The node image without a registry (root, debootstrap, ~10 min on vfs): see the README.
.PHONY: node-image
node-image:
	bash solver/deploy/build-offline.sh

# What `lilypad run` adds to a module's own run time, by phase, on a local network (ports +1000).
.PHONY: bench-e2e
bench-e2e: install
	$(BIN)/python bench/e2e_overhead.py

# A cheating provider, the IPFS node and the solver killed once each, under 30 jobs: the last lines
# are `honest tokens lost: N` and `cheats caught: C of T` (exit 1 unless 0 and C = T).
.PHONY: bench-faults
bench-faults: install
	$(BIN)/python bench/faults.py

# Many cowsay jobs at once (4 providers, every funded account posting), through one reused SDK
# client and through `lilypad run` processes; ARGS=--block-time 2 for a real L2's block cadence.
# The last line is `throughput: X jobs/s (sdk), Y jobs/s (cli), p95 Z ms, failures F`.
.PHONY: bench-warm
bench-warm: install
	$(BIN)/python bench/warm.py $(ARGS)

.PHONY: bench-throughput
bench-throughput: install
	$(BIN)/python bench/throughput.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
