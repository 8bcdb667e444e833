# The README's quick start and CI call these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint check clean bench wheel

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Third-party servers the tests run against (npm); skipped where npm is missing.
NPM_STAMP := tests/support/node_modules/.installed
$(NPM_STAMP): tests/support/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix tests/support && touch $(NPM_STAMP); \
	else echo "npm not found: tests that need tests/support are skipped"; fi

install: $(STAMP)

# Serve on the embedded defaults (SQLite file tidings.db, in-process bus, port 8000), with the
# demo inbox at http://127.0.0.1:8000/demo.
run: install
	$(BIN)/tidings serve --banner --demo

lint: install
	$(BIN)/ruff check src tests examples $(wildcard bench)
	$(BIN)/ruff format --check src tests examples $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install $(NPM_STAMP) lint
	$(BIN)/python -m pytest

# The wheel to install outside a checkout (docs/deployment.md): dist/tidings-<version>-*.whl.
# Built in a small venv of its own, with the build frontend the Dockerfile pins.
wheel:
	$(PYTHON) -m venv build/venv
	build/venv/bin/python -m pip install --quiet --disable-pip-version-check build==1.6.1
	build/venv/bin/python -m build --wheel --outdir dist

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
