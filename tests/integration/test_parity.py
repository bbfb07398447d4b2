"""Training/serving parity: replay a stream through the real updater into a real redis-server,
score every transaction through the real scorer, compare with the offline pipeline's rows."""

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_core import spec
from fraud_core.schemas import PredictRequest
from handlers import predict, update_features
from local_stack.demo import predict_body
from local_stack.replay import label_event, transaction_event
from tests.support.events import FakeContext, kinesis_event, msk_event
from tests.support.lambda_env import handler_environment
from tests.support.streams import synthetic_stream
from training.dataset import build_features

pytestmark = pytest.mark.integration

LABEL_DELAY = 2 * spec.DAY  # short, so that the 60-day stream exercises the merchant risk windows


def _transaction_payload(row: dict[Any, Any]) -> bytes:
    return transaction_event(row).model_dump_json().encode()


def _label_payload(row: dict[Any, Any]) -> bytes:
    return label_event(row, LABEL_DELAY).model_dump_json().encode()


def _request(row: dict[Any, Any]) -> PredictRequest:
    return PredictRequest.model_validate(predict_body(row))


@pytest.fixture(params=["events", "tiles"])
def lambda_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, handler_redis: str, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """The handlers' environment on one redis-server, or on a real 3-master Redis Cluster; cards
    stored as events (the stream's cards stay below the tile threshold) or as time tiles from
    their first event (``CARD_TILE_THRESHOLD=0``)."""
    tiles = {"CARD_TILE_THRESHOLD": "0"} if request.param == "tiles" else {}
    with handler_environment(monkeypatch, tmp_path, LABEL_DELAY, **tiles) as root:
        yield root


def test_online_features_equal_offline_rows(lambda_env: Path) -> None:
    # Given a stream with ties, bursts, window-edge gaps and frauds, and its offline rows
    df = synthetic_stream(n=1500)
    offline = build_features(df, label_delay=LABEL_DELAY).set_index("trans_num")
    rows = df.to_dict("records")
    events: list[tuple[int, str, bytes]] = [
        (int(r["event_time"]), "fraudsys.transactions", _transaction_payload(r)) for r in rows
    ]
    events += [
        (int(r["event_time"]) + LABEL_DELAY, "fraudsys.labels", _label_payload(r))
        for r in rows
        if r["is_fraud"] == 1
    ]
    events.sort(key=lambda e: e[0])
    rng = np.random.default_rng(3)
    scorer = predict.scorer()
    context = FakeContext()

    # When every event before t reaches the real updater (shuffled, some twice, some early,
    # with poison records, half as MSK and half as Kinesis events) before the scorer scores t
    applied = 0
    mismatches: list[str] = []
    poison = 0
    groups: list[tuple[Any, pd.DataFrame]] = list(df.groupby("event_time", sort=True))
    for batch_no, (t, group) in enumerate(groups):
        lookahead = int(t) + int(rng.integers(0, 3600))  # out of order: some later events arrive early
        end = applied
        while end < len(events) and events[end][0] < lookahead:
            end += 1
        batch = events[applied:end]
        applied = end
        if batch:
            dupes = [batch[i] for i in rng.choice(len(batch), max(1, len(batch) // 4))]
            records = [(topic, value) for _, topic, value in batch + dupes]
            if batch_no % 50 == 0:
                records.append(("fraudsys.transactions", b'{"kind": "transaction", "amt": "lots"}'))
                poison += 1
            order = rng.permutation(len(records))
            records = [records[i] for i in order]
            if batch_no % 2:
                response = update_features.handler(msk_event(records), context)
            else:
                response = update_features.handler(kinesis_event(v for _, v in records), context)
            assert response == {"batchItemFailures": []}
        for row in group.to_dict("records"):
            online = scorer.score(_request(row)).features[0]
            expected = offline.loc[str(row["trans_num"]), list(spec.FEATURE_NAMES)].to_numpy(dtype=float)
            for name, got, want in zip(spec.FEATURE_NAMES, online, expected, strict=True):
                if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
                    mismatches.append(f"{row['trans_num']} {name}: online {got!r} offline {want!r}")

    # Then every feature of every transaction matches, and the poison records were dead-lettered
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
    assert poison > 0
    assert len(list((lambda_env / "dead").rglob("*.json"))) == poison
    # and the stream really exercised the windows
    assert offline["card_cnt_1h"].max() >= 2
    assert offline["merch_fraud_cnt_30d"].max() >= 1
    assert (offline["card_distinct_merchants_24h"] >= 2).any()
