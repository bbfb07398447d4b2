#!/usr/bin/env bash
# The Python environment of the EMR Serverless feature job (docs/infra.md, "The Spark feature job"):
# a relocatable CPython 3.13 (uv's python-build-standalone build) with the job's libraries at the
# versions of uv.lock, packed as one archive for `spark.archives=...#environment`. No Docker: the
# wheels are manylinux wheels of the application's architecture.
#
#   scripts/build_emr_env.sh [x86_64|aarch64] [output.tar.gz]
#   aws s3 cp build/emr/fraudsys-env.tar.gz s3://<prefix>-features-<account>-<region>/emr/fraudsys-env.tar.gz
#
# The job's code is not in it: CDK uploads training/ and fraud_core as an S3 asset (--py-files).
set -euo pipefail
cd "$(dirname "$0")/.."

arch="${1:-x86_64}"
out="${2:-build/emr/fraudsys-env.tar.gz}"
case "$arch" in
  x86_64 | aarch64) ;;
  *) echo "usage: $0 [x86_64|aarch64] [output.tar.gz]" >&2; exit 2 ;;
esac

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# What the feature job imports (training.spark_features -> training.dataset -> fraud_core), at the
# lock's versions; PySpark itself is the EMR release's.
packages='^(numpy|pandas|pyarrow|pydantic|pydantic-core|annotated-types|typing-extensions|typing-inspection|python-dateutil|six|tzdata)=='
uv export --frozen --no-dev --no-hashes --no-emit-project --format requirements-txt |
  grep -E "$packages" | sed 's/ *;.*//' >"$work/requirements.txt"
echo "build_emr_env: $(tr '\n' ' ' <"$work/requirements.txt")"

uv python install "cpython-3.13-linux-${arch}-gnu" --install-dir "$work/python" >/dev/null
root="$(find "$work/python" -maxdepth 1 -type d -name "cpython-3.13*-linux-${arch}-gnu" | head -n 1)"
uv pip install --quiet --target "$root/lib/python3.13/site-packages" \
  --python-platform "${arch}-manylinux_2_28" --python-version 3.13 --only-binary :all: \
  -r "$work/requirements.txt"

mkdir -p "$(dirname "$out")"
tar -C "$root" -czf "$out" .
echo "build_emr_env: $out ($(du -h "$out" | cut -f1)); PYSPARK_PYTHON=./environment/bin/python3"
