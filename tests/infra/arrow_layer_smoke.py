"""Run with the archiver's two layers only: ``python -I -S arrow_layer_smoke.py <xgboost>/python
<arrow>/python <lambdas>``.

``-I -S``: no PYTHONPATH, no user or venv site-packages, so the only third-party code importable is
the layers'. The real lake writer writes a batch to a temp folder and pyarrow reads it back.
Prints a JSON summary; any failure raises (non-zero exit).
"""

import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime

for path in reversed(sys.argv[1:]):
    sys.path.insert(0, os.path.abspath(path))

started = time.perf_counter()
import pyarrow  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import_ms = (time.perf_counter() - started) * 1000

from fraud_adapters.blobs import LocalBlobStore  # noqa: E402
from fraud_adapters.lake import LakeRecord, LakeWriter, lake_schema  # noqa: E402
from fraud_adapters.redis_store import CardHasher  # noqa: E402
from fraud_core.schemas import TransactionEvent  # noqa: E402

event = TransactionEvent(
    trans_num="t-1",
    cc_num="4111111111111111",
    merchant="m",
    category="travel",
    amt=1.5,
    transaction_time=datetime(2020, 6, 21, tzinfo=UTC),
    lat=1.0,
    long=2.0,
    city_pop=3,
    merch_lat=1.0,
    merch_long=2.0,
)
with tempfile.TemporaryDirectory() as root:
    (written,) = LakeWriter(LocalBlobStore(root), CardHasher(b"smoke-test-key-0123")).append(
        [LakeRecord(event, "kafka:t-0@0", 1_592_697_600)]
    )
    table = pq.read_table(written)
    assert table.schema.equals(lake_schema())
    assert table.num_rows == 1
outside = [
    m.__file__
    for m in list(sys.modules.values())
    if getattr(m, "__file__", None) and "site-packages" in str(m.__file__)
]
assert not outside, outside
print(json.dumps({"pyarrow": pyarrow.__version__, "import_ms": round(import_ms, 1), "rows": 1}))
