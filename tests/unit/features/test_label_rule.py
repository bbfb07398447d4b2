"""The label rule both paths share (``fraud_core.features.fraud_intervals``) and the time guard
(``fraud_core.timeguard``): pure logic, no services."""

from datetime import UTC, datetime

import numpy as np
import pytest

from fraud_core import spec, timeguard
from fraud_core.features import fraud_intervals, merchant_frauds
from tests.support.events import a_request


def _frauds_at(labels: list[tuple[int, int, bool]], t: int) -> int:
    """Frauds the 30-day risk window counts at ``t`` for (transaction, arrival, is_fraud) labels
    of transactions at time 0, with no delay."""
    n = len(labels)
    intervals = fraud_intervals(
        key=np.zeros(n, dtype=np.int64),
        trans=np.array([tr for tr, _, _ in labels], dtype=np.int64),
        trans_t=np.zeros(n, dtype=np.int64),
        arrival=np.array([a for _, a, _ in labels], dtype=np.int64),
        is_fraud=np.array([f for _, _, f in labels], dtype=bool),
    )
    return int(merchant_frauds(intervals, np.zeros(1, dtype=np.int64), np.array([t]), 0)[-1, 0])


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ([(1, 100, True)], {100: 0, 101: 1, 10_000: 1}),  # counts from after its arrival
        ([(1, 100, True), (1, 200, False)], {150: 1, 200: 1, 201: 0}),  # a correction, from its arrival
        ([(1, 200, False), (1, 100, True)], {150: 1, 201: 0}),  # whatever the order they came in
        ([(1, 100, True), (1, 100, False)], {101: 1}),  # same second: fraud wins
        ([(1, 100, True), (1, 200, False), (1, 300, True)], {250: 0, 301: 1}),  # and back again
        ([(1, 100, True), (1, 100, True), (1, 100, True)], {101: 1}),  # redelivered: one label
        ([(1, 100, False)], {101: 0}),  # a correction alone
        ([(1, 100, True), (2, 150, True), (1, 120, False)], {130: 0, 151: 1}),  # per transaction
    ],
)
def test_the_latest_label_by_arrival_holds_from_its_arrival(
    labels: list[tuple[int, int, bool]], expected: dict[int, int]
) -> None:
    assert {t: _frauds_at(labels, t) for t in expected} == expected


def test_the_time_guard_refuses_the_future_of_the_receipt_only() -> None:
    now = 1_700_000_000
    event = a_request(transaction_time=datetime.fromtimestamp(now + 301, UTC)).to_event()
    assert timeguard.refusal(event, now, 300) is not None
    assert timeguard.refusal(event, now + 1, 300) is None
    assert timeguard.refusal(event, None, 300) is None  # no receipt known: nothing to compare
    stamped = event.model_copy(update={"received_at": datetime.fromtimestamp(now, UTC)})
    assert timeguard.receipt(stamped, now + 3600) == now  # the earlier of stamp and broker time
    assert timeguard.request_refusal(now - 10 * spec.DAY, now, 300, None) is None
    assert timeguard.request_refusal(now - 10 * spec.DAY, now, 300, 7 * spec.DAY) is not None


def test_a_label_chain_is_one_transaction_as_its_labels_place_it() -> None:
    # given a fraud label placing transaction 1 at time 0, and a correction placing it at time 50
    # (another transaction as far as the windows go: both paths keep them apart)
    intervals = fraud_intervals(
        key=np.zeros(2, dtype=np.int64),
        trans=np.array([0, 1], dtype=np.int64),  # the (merchant, id, time) codes differ
        trans_t=np.array([0, 50], dtype=np.int64),
        arrival=np.array([100, 200], dtype=np.int64),
        is_fraud=np.array([True, False]),
    )
    # then the fraud stands: the correction is for a transaction the first label does not name
    assert intervals.until.tolist() == [np.iinfo(np.int64).max]
