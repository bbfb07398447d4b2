# FraudSys: `make demo` runs the whole system locally; `make test` runs every check.
.PHONY: setup demo test lint typecheck security unit bench synth clean

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION ?= 20
export CDK_DISABLE_CLI_TELEMETRY ?= true

# scripts/bootstrap.sh installs uv with `pip install --user` when it is missing: the binary lands in
# the user base's bin folder (~/.local/bin), which a fresh machine's PATH often lacks (root, CI).
# Appended, so a uv already on PATH keeps precedence.
PY_USER_BIN := $(shell python3 -m site --user-base 2>/dev/null)/bin
export PATH := $(PATH):$(HOME)/.local/bin:$(PY_USER_BIN)

setup:
	bash scripts/bootstrap.sh --node --localstack

demo:
	bash scripts/bootstrap.sh
	uv run fraudsys demo

lint:
	uv run ruff check .
	uv run ruff format --check .

typecheck:
	uv run mypy .

security:
	uv run bandit -c pyproject.toml -r lambdas training local_stack cdk_app fraudsys_cli bench -q
	git ls-files -z | xargs -0 uv run detect-secrets-hook

test: setup lint typecheck security
	uv run pytest

bench:
	uv run python -m bench.run_all

synth:
	CDK_OUTDIR=cdk.out uv run python app.py

clean:
	rm -rf cdk.out build .pytest_cache .mypy_cache .ruff_cache
