"""``fraudsys backfill``: the online store rebuilt from the event lake the updater archived.

The disaster test of issue 13: a stream with labels (late, reversed, duplicated) goes through the
real updater (archiving to a lake folder) into Redis; Redis is wiped in the middle; the backfill
rebuilds it from the lake while events keep coming; every transaction scored after the recovery
equals the offline row built from the lake (0 mismatches), and running the backfill again, or
redelivering the recent batches, changes nothing (no double counting). On one redis-server and on
a real Redis Cluster.
"""

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fraud_adapters.store_marker import StoreMarker
from fraud_core import spec
from fraud_core.schemas import LabelEvent, PredictRequest
from handlers import bootstrap, predict, update_features
from local_stack.demo import predict_body
from local_stack.replay import transaction_event
from tests.support.events import FakeContext, msk_event
from tests.support.lambda_env import handler_environment
from tests.support.streams import synthetic_stream
from training.backfill import backfill
from training.data.lake import read_lake
from training.dataset import build_features

pytestmark = pytest.mark.integration

DELAY = 2 * spec.DAY
TX_TOPIC, LABEL_TOPIC = "fraudsys.transactions", "fraudsys.labels"


@pytest.fixture
def lake_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, handler_redis: str) -> Iterator[Path]:
    with handler_environment(monkeypatch, tmp_path, DELAY, LAKE_URI=str(tmp_path / "lake")) as root:
        yield root


def _labels(df: pd.DataFrame) -> list[LabelEvent]:
    """A label per fraud at the delay, some late, some reversed later, all in arrival order."""
    out = []
    for i, row in enumerate(df[df["is_fraud"] == 1].to_dict("records")):
        t, tn, m = int(row["event_time"]), str(row["trans_num"]), str(row["merchant"])
        arrival = t + (DELAY if i % 3 else 5 * spec.DAY)
        out.append(LabelEvent(trans_num=tn, merchant=m, transaction_time=_when(t), label_time=_when(arrival)))
        if i % 4 == 0:
            out.append(
                LabelEvent(
                    trans_num=tn,
                    merchant=m,
                    transaction_time=_when(t),
                    label_time=_when(arrival + spec.DAY),
                    is_fraud=False,
                )
            )
    return out


def _when(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_redis_wiped_mid_stream_is_rebuilt_from_the_lake_exactly(lake_env: Path) -> None:
    # given a stream of transactions and labels, in arrival order
    df = synthetic_stream(n=900, n_cards=20, n_merchants=8, days=45, seed=5)
    events: list[tuple[int, str, bytes]] = [
        (int(r["event_time"]), TX_TOPIC, transaction_event(r).model_dump_json().encode())
        for r in df.to_dict("records")
    ]
    events += [(e.arrival_time, LABEL_TOPIC, e.model_dump_json().encode()) for e in _labels(df)]
    events.sort(key=lambda e: e[0])
    scorer = predict.scorer()
    wipe_at = int(df["event_time"].quantile(0.6))
    sent: list[list[tuple[str, bytes]]] = []
    scored: dict[str, np.ndarray[Any, Any]] = {}
    applied = 0
    recovered = False

    # when every event before t goes through the real updater before t is scored, Redis is wiped
    # at 60 % of the stream and rebuilt by the backfill from what the updater archived
    for t in sorted(set(df["event_time"].tolist())):
        end = applied
        while end < len(events) and events[end][0] < t:
            end += 1
        batch = [(topic, value) for _, topic, value in events[applied:end]]
        applied = end
        if batch:
            assert update_features.handler(msk_event(batch), FakeContext()) == {"batchItemFailures": []}
            sent.append(batch)
        if not recovered and t >= wipe_at:
            store = bootstrap.feature_store()
            store.client.flushall()
            assert StoreMarker(store.client, store.prefix).read() is None  # lost with the data
            lake = read_lake(str(lake_env / "lake"))
            first = backfill(lake.transactions, lake.labels, store, bootstrap.transaction_index())
            second = backfill(lake.transactions, lake.labels, store, bootstrap.transaction_index())
            assert first.applied > 0
            assert StoreMarker(store.client, store.prefix).read() is not None  # filled again
            assert second.applied == 0  # every event was there (or is older than its key's retention)
            assert second.duplicates + second.late == first.applied + first.duplicates + first.late
            for batch in sent[-20:]:  # the stream redelivers what it had in flight
                update_features.handler(msk_event(batch), FakeContext())
            recovered = True
        for row in df[df["event_time"] == t].to_dict("records"):
            scored[str(row["trans_num"])] = scorer.score(
                PredictRequest.model_validate(predict_body(row))
            ).features[0]

    rest = [(topic, value) for _, topic, value in events[applied:]]  # the stream goes on after t
    assert update_features.handler(msk_event(rest), FakeContext()) == {"batchItemFailures": []}

    # then every transaction scored after the recovery equals the offline row built from the lake
    lake = read_lake(str(lake_env / "lake"))
    offline = build_features(lake.transactions, DELAY, labels=lake.labels).set_index("trans_num")
    after = df[df["event_time"] >= wipe_at]["trans_num"].astype(str).tolist()
    mismatches = [
        f"{tn} {name}: online {got!r} offline {want!r}"
        for tn in after
        for name, got, want in zip(
            spec.FEATURE_NAMES,
            scored[tn],
            offline.loc[tn, list(spec.FEATURE_NAMES)].to_numpy(dtype=float),
            strict=True,
        )
        if not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    ]
    assert recovered
    assert not (lake_env / "dead").exists()  # nothing refused: no redelivery looked like a conflict
    assert len(after) > 300
    assert mismatches == [], f"{len(mismatches)} mismatches, first: {mismatches[:10]}"
    # and the lake held the whole stream once (redelivery deduplicated at read)
    assert sorted(lake.transactions["trans_num"]) == sorted(df["trans_num"].astype(str))
    assert offline["merch_fraud_cnt_30d"].max() >= 1


def _dump(client: Any) -> dict[bytes, tuple[str, Any, int]]:
    """Every key: its type, its whole value and its TTL (seconds)."""
    out: dict[bytes, tuple[str, Any, int]] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key).decode()
        if kind == "zset":
            value: Any = client.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            value = client.hgetall(key)
        else:
            value = client.get(key)
        out[key] = (kind, value, int(client.ttl(key)))
    return out


def test_the_backfill_writes_the_updaters_state_key_for_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, handler_redis: str
) -> None:
    from training.backfill import backfill_window, lake_start_day
    from training.data.lake import latest_dob_transactions

    # given a stream through the real updater (cards tiled above 4 events): a busy card with more
    # events than a script call takes (256), labels late and reversed, a card whose dob event is
    # below its retention point, one whose dob event is older than the backfill's window
    with handler_environment(
        monkeypatch, tmp_path, DELAY, LAKE_URI=str(tmp_path / "lake"), CARD_TILE_THRESHOLD="4"
    ):
        df = synthetic_stream(n=500, n_cards=12, n_merchants=6, days=20, seed=11)
        end = int(df["event_time"].max())
        one = df.iloc[0].to_dict()
        busy = [
            one
            | {
                "trans_num": f"busy{i:04d}",
                "cc_num": "4999000011112222",
                "event_time": end - 8 * spec.DAY + 97 * i,
            }
            | {"amt": 10.0 + i % 50, "dob": "1980-02-29"}
            for i in range(300)
        ]
        below = [
            one
            | {
                "trans_num": "below-old",
                "cc_num": "4999000033334444",
                "event_time": end - 32 * spec.DAY - spec.HOUR,
                "dob": "1971-03-04",
            },
            one
            | {
                "trans_num": "below-new",
                "cc_num": "4999000033334444",
                "event_time": end - spec.DAY,
                "dob": "",
            },
        ]
        outside = [
            one
            | {
                "trans_num": "outside-old",
                "cc_num": "4999000055556666",
                "event_time": end - 45 * spec.DAY,
                "dob": "1969-12-31",
            },
            one
            | {
                "trans_num": "outside-new",
                "cc_num": "4999000055556666",
                "event_time": end - 2 * spec.DAY,
                "dob": "",
            },
        ]
        rows = (
            pd.concat([df, pd.DataFrame(busy + below + outside)]).sort_values("event_time").to_dict("records")
        )
        events: list[tuple[int, str, bytes]] = [
            (int(r["event_time"]), TX_TOPIC, transaction_event(r).model_dump_json().encode()) for r in rows
        ]
        events += [(e.arrival_time, LABEL_TOPIC, e.model_dump_json().encode()) for e in _labels(df)]
        events.sort(key=lambda e: e[0])
        for day in range(0, len(events), 400):
            batch = [(topic, value) for _, topic, value in events[day : day + 400]]
            assert update_features.handler(msk_event(batch), FakeContext()) == {"batchItemFailures": []}
        store = bootstrap.feature_store()
        client = store.client
        updater = _dump(client)

        # when Redis is lost and the backfill rebuilds it from the lake
        client.flushall()
        lake = read_lake(str(tmp_path / "lake"))
        newest = int(lake.transactions["event_time"].max())
        profiles = latest_dob_transactions(str(tmp_path / "lake"), lake_start_day(store, newest))
        stats = backfill(
            lake.transactions, lake.labels, store, bootstrap.transaction_index(), profiles=profiles
        )
        backfilled = _dump(client)
        marker = StoreMarker(client, store.prefix)
        filled = marker.read()
        assert filled is not None
        assert filled.by == "fraudsys backfill"
        # (the fixture marked the store the updater filled; the backfill marked it again)
        assert updater.pop(marker.key.encode())[1] != backfilled.pop(marker.key.encode())[1]

    # then every key holds what the updater wrote (type and value; TTLs within a minute), but the
    # index entries of transactions older than the window (no label can change a feature there)
    since = backfill_window(store, newest)
    old = {str(r["trans_num"]) for r in rows if int(r["event_time"]) < since}
    assert old == {"outside-old"}
    expected = dict(updater)
    for key, (kind, value, ttl) in updater.items():
        if key.startswith(b"fs:{xi:"):  # the index's buckets: their entries but the old ones
            kept = {f: v for f, v in value.items() if f.decode() not in old}
            if kept:
                expected[key] = (kind, kept, ttl)
            else:
                del expected[key]
    assert sorted(backfilled) == sorted(expected)
    different = [k for k in expected if backfilled[k][:2] != expected[k][:2]]
    assert different == [], f"{len(different)} keys differ, first {different[:3]}"
    assert all(abs(backfilled[k][2] - expected[k][2]) <= 60 and backfilled[k][2] > 0 for k in expected)
    # (what the stream held: a busy card, tiled cards, an older profile, frauds and reversals)
    busy_keys = store.card_keys(store.hasher("4999000011112222"))
    assert len(backfilled[busy_keys[0].encode()][1]) == 300
    assert busy_keys[2].encode() in backfilled
    assert sum(key.endswith(b":t") for key in backfilled) > 5
    below_profile = backfilled[store.card_keys(store.hasher("4999000033334444"))[1].encode()][1]
    assert below_profile[b"od"] == str((date(1971, 3, 4) - date(1970, 1, 1)).days).encode()
    outside_profile = backfilled[store.card_keys(store.hasher("4999000055556666"))[1].encode()][1]
    assert outside_profile[b"dob"] == b"1969-12-31"
    assert any(key.endswith(b":f") for key in backfilled)
    assert stats.late >= 1


def test_a_date_of_birth_older_than_the_window_survives_a_backfill(lake_env: Path) -> None:
    from training.backfill import lake_start_day
    from training.data.lake import latest_dob_transactions

    # given a card whose date of birth came 40 days before its newest transaction
    base = synthetic_stream(n=3, n_cards=1, n_merchants=1, days=1, seed=9).to_dict("records")
    t0 = int(base[0]["event_time"])
    rows = [
        base[0] | {"trans_num": "old", "event_time": t0, "dob": "1975-06-15"},
        base[1] | {"trans_num": "new", "event_time": t0 + 40 * spec.DAY, "dob": None},
    ]
    batch = [(TX_TOPIC, transaction_event(r).model_dump_json().encode()) for r in rows]
    assert update_features.handler(msk_event(batch), FakeContext()) == {"batchItemFailures": []}

    # when Redis is lost and rebuilt from the lake (its window, plus each card's latest dob)
    store = bootstrap.feature_store()
    store.client.flushall()
    lake = read_lake(str(lake_env / "lake"))
    newest = int(lake.transactions["event_time"].max())
    profiles = latest_dob_transactions(str(lake_env / "lake"), lake_start_day(store, newest))
    backfill(lake.transactions, lake.labels, store, profiles=profiles)

    # then a request without a dob sees the card's age, as offline
    query = base[2] | {"trans_num": "q", "event_time": t0 + 41 * spec.DAY, "dob": None}
    online = predict.scorer().score(PredictRequest.model_validate(predict_body(query))).features[0]
    offline = build_features(pd.DataFrame([*rows, query]), DELAY).set_index("trans_num")
    age = spec.FEATURE_NAMES.index("age_years")
    assert online[age] == pytest.approx(float(offline.loc["q", ["age_years"]].to_numpy(dtype=float)[0]))
    assert online[age] > 40


def test_the_backfill_command_rebuilds_the_store_from_the_lake(lake_env: Path) -> None:
    from typer.testing import CliRunner

    from fraudsys_cli import app
    from training.data.lake import newest_transaction_day

    # given transactions archived by the updater over 40 days, and Redis lost
    rows = synthetic_stream(n=200, n_cards=5, n_merchants=3, days=40, seed=3).to_dict("records")
    batch = [(TX_TOPIC, transaction_event(r).model_dump_json().encode()) for r in rows]
    assert update_features.handler(msk_event(batch), FakeContext()) == {"batchItemFailures": []}
    store = bootstrap.feature_store()
    card = str(rows[-1]["cc_num"])
    t = int(rows[-1]["event_time"]) + 1
    before = store.read(card, str(rows[-1]["merchant"]), t).plain()
    store.client.flushall()

    # when `fraudsys backfill` runs with the handlers' settings (the newest day from the partition names)
    assert newest_transaction_day(str(lake_env / "lake")) == _when(int(rows[-1]["event_time"])).date()
    result = CliRunner().invoke(app, ["backfill"])

    # then the card's state is what the updater had built
    assert result.exit_code == 0, result.output
    assert "transactions" in result.output
    assert store.read(card, str(rows[-1]["merchant"]), t).plain() == before
