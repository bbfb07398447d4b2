"""Months of history replayed at full speed through the local stack (the demo's replay): the real
broker with two partitions per topic, the local MSK event source, the real updater and Redis.
Nothing is dead-lettered as late, and the store ends where the offline features say."""

import math
from collections.abc import Iterator

import pandas as pd
import pytest

from bench.synthetic import kaggle_like_frame
from fraud_core import spec
from fraud_core.online import request_features
from fraud_core.schemas import PredictRequest
from handlers import bootstrap
from local_stack.demo import predict_body
from local_stack.replay import replay
from local_stack.stack import LocalStack
from tests.e2e.test_local_stack import running_stack, wait_until
from training.dataset import build_features

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELAY = 2 * spec.DAY
NAMES = list(spec.FEATURE_NAMES)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(
        tmp_path_factory.mktemp("replay"), label_delay_seconds=DELAY, with_mlflow=False
    ) as local:
        yield local


def test_months_of_history_at_full_speed_are_applied_without_late_dead_letters(stack: LocalStack) -> None:
    # Given 120 days of a stream (20,000 transactions, ~170 a day: a day of event time passes in
    # a few milliseconds of the replay), cards and merchants spread over both partitions
    frame = kaggle_like_frame(20_000, n_cards=400, n_merchants=60, days=120, seed=11, fraud_rate=0.01)
    publisher = bootstrap.kafka_publisher(stack.cfg.kafka)
    progress = stack.replay_progress()
    try:
        # When it is replayed as fast as the broker takes it, guarded by the updater's progress
        stats = replay(
            frame, lambda events: publisher.publish(events, timeout=30), 100_000.0, DELAY, applied=progress
        )
        sent = stats.transactions + stats.labels
        wait_until(lambda: progress() >= sent, timeout=300, what=f"the updater to handle {sent:,} records")
    finally:
        progress.close()
        publisher.close()

    # Then no record was refused (late, or anything else)
    assert stack.dead_letters() == {}
    # and a request after the end sees every window as the offline features computed from the
    # same events (a card and its merchant each, three of the busiest cards)
    end = int(frame["event_time"].max())
    busiest = frame["cc_num"].value_counts().index[:3]
    for k, card in enumerate(busiest):
        last = frame[frame["cc_num"] == card].sort_values("event_time").iloc[-1].to_dict()
        probe = {**last, "trans_num": f"probe-{k}", "event_time": end + 60, "is_fraud": 0}
        offline = build_features(pd.concat([frame, pd.DataFrame([probe])]), label_delay=DELAY)
        row = offline[offline["trans_num"] == f"probe-{k}"].iloc[0].to_dict()
        expected = {name: float(row[name]) for name in NAMES}
        request = PredictRequest.model_validate(predict_body(probe))
        state = bootstrap.feature_store().read(request.card_id, request.merchant_name, end + 60)
        online = dict(zip(NAMES, request_features(request, state, DELAY)[0], strict=True))
        wrong = {
            name: (online[name], expected[name])
            for name in NAMES
            if not math.isclose(online[name], expected[name], rel_tol=1e-6, abs_tol=1e-6)
        }
        assert wrong == {}, f"card {k}: online vs offline {wrong}"
