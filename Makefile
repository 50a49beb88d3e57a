# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv with the project installed if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: demo test lint typecheck contracts pytest bench bench-forward compose-check clean fuzz soak

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m demo $(ARGS)

test: lint typecheck contracts pytest

lint: $(STAMP)
	$(BIN)/ruff check envelope custody client gateway tests bench demo tools deploy
	$(BIN)/ruff format --check envelope custody client gateway tests bench demo tools deploy

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports

# Two workers (CI has 2 cores); a file's tests stay on one worker (module fixtures).
pytest: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile

# Long fuzzing run (issue 8 §1): FUZZ_EXAMPLES cases per file (the ledger file
# runs a third of them); `make test` runs the default 10,000. ~8 min at 100,000.
FUZZ_EXAMPLES ?= 100000

fuzz: $(STAMP)
	LGWAN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -s -p no:cacheprovider \
		tests/envelope/test_fuzz.py tests/custody/test_fuzz_records.py \
		tests/client/test_fuzz_ledger.py

# Soak (issue 8 §4): seal → send → forward → pull → open → erase cycles with concurrent
# clients for SOAK_MINUTES (bounded: ≤ 10 minutes in all), then every batch accounted
# for, both audit logs verified, the gateway's RSS and fds within 10 % of warm-up.
# CI runs `make soak SOAK_MINUTES=2` (.ci/run); `make test` a short one
# (tests/integration/test_soak.py).
SOAK_MINUTES ?= 8

soak: $(STAMP)
	$(BIN)/python -m tools.soak --minutes $(SOAK_MINUTES) $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/seal.py
	$(BIN)/python bench/forward.py
	$(BIN)/python bench/sftp.py

bench-forward: $(STAMP)
	$(BIN)/python bench/forward.py $(ARGS)

# Validate docker-compose.yml, Dockerfile and .dockerignore (no Docker engine needed).
compose-check: $(STAMP)
	$(BIN)/python -m tools.compose_check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
