# Tether: `make demo` runs a local mesh, `make test` runs everything CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
TOOLS := .tools
# Use uv from PATH if present; otherwise bootstrap a pinned copy with pip into .tools/.
UV := $(or $(shell command -v uv 2>/dev/null),$(TOOLS)/bin/uv)
PROTO_ROOT := shared/src
PROTOS := $(shell find $(PROTO_ROOT)/tether/shared/proto -name '*.proto' | sort)

.PHONY: help sync checkov-env test demo lint typecheck unit proto clean bench bench-proxy-tools

help:
	@echo "make demo    - the local mesh with a demo application and its live golden metrics (tether demo)"
	@echo "make test    - lint, typecheck and run every test (what CI runs)"
	@echo "make proto   - regenerate the gRPC code from the .proto files"
	@echo "make e2e     - the end-to-end suite: the mesh in network namespaces under faults (as root; in make unit too)"
	@echo "make e2e-report - run the e2e suite (as root) and regenerate docs/reliability.md from its results"
	@echo "make images  - build the component images (services/*/Dockerfile) with docker or podman, tagged as"
	@echo "               $(IMAGES_KUSTOMIZATION) says; without a container engine it says so and exits 0"
	@echo "make bench-<name> - run bench/<name>/run.py (identity, destination, proxy, telemetry); make bench runs all"

$(TOOLS)/bin/uv:
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

.venv/.synced: $(UV) uv.lock pyproject.toml $(wildcard */pyproject.toml services/*/pyproject.toml)
	$(UV) sync --locked --all-packages
	@touch $@

sync: .venv/.synced

# checkov pins packaging<24, which the workspace's pytest cannot share: it gets its own locked environment.
CHECKOV_ENV := tools/checkov/.venv/.synced
$(CHECKOV_ENV): $(UV) tools/checkov/uv.lock tools/checkov/pyproject.toml
	$(UV) sync --locked --project tools/checkov
	@touch $@

checkov-env: $(CHECKOV_ENV)

lint: sync
	$(UV) run --no-sync ruff check .
	$(UV) run --no-sync ruff format --check .

# Test directories whose conftest.py puts the directory on sys.path so its tests import sibling helpers by bare
# name (pytest runs with --import-mode=importlib). mypy resolves those imports only with the directory on MYPYPATH,
# which also makes its conftest.py the top-level module `conftest`, colliding with the root conftest.py and with
# each other; so each such directory gets its own mypy run.
SIBLING_IMPORT_TEST_DIRS := tests/netns tests/proxy tests/telemetry services/proxy/tests cli/tests tests/e2e
# tests/e2e builds on the netns harness: it imports tests/netns' helpers by bare name too.
E2E_MYPYPATH := tests/e2e:tests/netns
# Every other directory holding tests (services/telemetry/tests may be empty, which mypy refuses).
TEST_DIRS := $(filter-out $(addsuffix /,$(SIBLING_IMPORT_TEST_DIRS)), \
  $(sort $(dir $(wildcard shared/tests/*.py cli/tests/*.py services/*/tests/*.py tests/*/*.py))))

typecheck: sync
	$(UV) run --no-sync mypy shared/src cli/src services/*/src
	@# bench/proxy imports the netns test harness the same way its tests do.
	MYPYPATH=tests/netns $(UV) run --no-sync mypy conftest.py $(TEST_DIRS) bench
	set -e; for dir in $(SIBLING_IMPORT_TEST_DIRS); do path=$$dir; [ $$dir != tests/e2e ] || path=$(E2E_MYPYPATH); \
	  MYPYPATH=$$path $(UV) run --no-sync mypy $$dir; done

unit: sync checkov-env
	$(UV) run --no-sync pytest

test: lint typecheck unit

demo: sync
	$(UV) run --no-sync tether demo $(DEMO_ARGS)

proto: sync
	$(UV) run --no-sync python -m grpc_tools.protoc -I $(PROTO_ROOT) \
	  --python_out=$(PROTO_ROOT) --pyi_out=$(PROTO_ROOT) --grpc_python_out=$(PROTO_ROOT) $(PROTOS)

# `tether install` prints these: deploy/ rendered once, shipped inside tether-cli (a test fails when they
# drift from a live render; rerun this after changing deploy/).
INSTALL_MANIFESTS := cli/src/tether/cli/install/manifests
.PHONY: manifests
manifests: sync
	$(UV) run --no-sync kubectl kustomize deploy > $(INSTALL_MANIFESTS)/default.yaml
	$(UV) run --no-sync kubectl kustomize deploy/overlays/ha > $(INSTALL_MANIFESTS)/ha.yaml

clean:
	rm -rf .venv $(TOOLS) .mypy_cache .ruff_cache .pytest_cache

BENCHES := $(notdir $(patsubst %/,%,$(dir $(wildcard bench/*/run.py))))

# h2load, nghttpd and nghttpx come from Debian's nghttp2 packages.
bench-proxy-tools:
	@command -v h2load >/dev/null && command -v nghttpd >/dev/null && command -v nghttpx >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq nghttp2-client nghttp2-server nghttp2-proxy >/dev/null)

bench-proxy bench-identity: bench-proxy-tools

bench-%: sync
	$(UV) run --no-sync python bench/$*/run.py $(BENCH_ARGS)

bench: $(addprefix bench-,$(BENCHES))

# The component images, tagged as the kustomize images: list says (the one place image names and tags are set).
IMAGES_KUSTOMIZATION := deploy/components/images/kustomization.yaml
.PHONY: images
images:
	@UV_VERSION=$(UV_VERSION) sh tools/images/build.sh $(IMAGES_KUSTOMIZATION)

# docs/reliability.md is generated: the whole e2e suite runs (as root), each scenario writes its result, and the
# table is rendered from them (tests/e2e/reliability.py; tests/e2e/test_faults_report.py fails on a stale one, so
# that check of the file about to be rewritten is left out of this run).
.PHONY: e2e-report
e2e-report: sync
	@results=$$(mktemp -d) && trap 'rm -rf "$$results"' EXIT && \
	TETHER_E2E_RESULTS="$$results" $(UV) run --no-sync pytest tests/e2e -q \
	  --deselect tests/e2e/test_faults_report.py::test_the_committed_report_matches_the_suite && \
	$(UV) run --no-sync python tests/e2e/reliability.py render --results "$$results" --out docs/reliability.md

# The end-to-end suite (tests/e2e): a cluster in network namespaces, the control plane as deploy/ renders it and
# injected workloads, under faults. Needs root (outside CI it skips without; under CI=true a skip fails); `make
# unit` runs it too.
.PHONY: e2e
e2e: sync
	$(UV) run --no-sync pytest tests/e2e
