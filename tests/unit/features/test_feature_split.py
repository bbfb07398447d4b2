"""``card_features`` and ``merchant_features``: ``build_features`` split by what each column
depends on, the contract the Spark engine (``training.spark_features``) is built on.

A card's rows computed from a frame holding only some whole cards, and a merchant's rows from a
frame holding only some whole merchants (with their label events), equal the rows of the whole
frame bit for bit, whatever the row order.
"""

import numpy as np
import pandas as pd
import pytest

from fraud_core import spec
from training.data.simulator import SimulatorConfig, simulate
from training.dataset import (
    CARD_FEATURES,
    ID_COLUMNS,
    LABEL_COLUMN,
    MERCHANT_FEATURES,
    build_features,
    card_features,
    label_events_at_delay,
    merchant_features,
)

DELAY = 3 * spec.DAY


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = simulate(SimulatorConfig(seed=5, n_cards=120, n_merchants=40, n_days=75))
    rng = np.random.default_rng(5)
    # same-second ties within cards and merchants, and rows without a date of birth
    tie = rng.random(len(df)) < 0.05
    t = df["event_time"].to_numpy().copy()
    t[1:][tie[1:]] = t[:-1][tie[1:]]
    dob = np.array(df["dob"], dtype=object)
    dob[rng.random(len(df)) < 0.2] = ""
    return df.assign(event_time=t, dob=dob).sample(frac=1.0, random_state=5).reset_index(drop=True)


@pytest.fixture(scope="module")
def labels(frame: pd.DataFrame) -> pd.DataFrame:
    base = label_events_at_delay(frame, DELAY)
    rng = np.random.default_rng(6)
    late = base.assign(label_time=base["label_time"] + rng.integers(1, 20 * spec.DAY, len(base)))
    reversed_ = late.sample(frac=0.3, random_state=6)
    reversed_ = reversed_.assign(label_time=reversed_["label_time"] + spec.DAY, is_fraud=np.int8(0))
    return pd.concat([base.sample(frac=0.5, random_state=7), late, reversed_], ignore_index=True)


def test_the_split_covers_every_feature_once() -> None:
    assert set(CARD_FEATURES) | set(MERCHANT_FEATURES) == set(spec.FEATURE_NAMES)
    assert not set(CARD_FEATURES) & set(MERCHANT_FEATURES)
    windows = ("24h", "7d", "fraud_rate_7d", "fraud_rate_30d", "fraud_cnt_7d", "fraud_cnt_30d")
    assert sorted(MERCHANT_FEATURES) == sorted(
        f"merch_{w}" if "fraud" in w else f"merch_cnt_{w}" for w in windows
    )


def test_card_features_of_whole_cards_equal_build_features(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    # Given the whole frame's rows and the cards split into three groups
    whole = build_features(frame, DELAY, labels)
    cards = frame["cc_num"].unique()
    group = dict(zip(cards, np.arange(len(cards)) % 3, strict=True))
    # When each group's rows go through card_features alone, in reversed order
    parts = []
    for k in range(3):
        part = frame.loc[frame["cc_num"].map(group).to_numpy() == k].iloc[::-1]
        parts.append(card_features(part))
    rows = pd.concat(parts).loc[frame.index]
    # Then ids, labels and card columns are those of the whole frame, bit for bit
    assert list(rows.columns) == [*ID_COLUMNS, LABEL_COLUMN, *CARD_FEATURES]
    pd.testing.assert_frame_equal(rows, whole[list(rows.columns)], check_exact=True)


def test_merchant_features_of_whole_merchants_equal_build_features(
    frame: pd.DataFrame, labels: pd.DataFrame
) -> None:
    whole = build_features(frame, DELAY, labels)
    merchants = frame["merchant"].unique()
    group = dict(zip(merchants, np.arange(len(merchants)) % 4, strict=True))
    parts = []
    for k in range(4):
        part = frame.loc[frame["merchant"].map(group).to_numpy() == k].iloc[::-1]
        own = labels.loc[labels["merchant"].map(group).to_numpy() == k]
        parts.append(merchant_features(part, DELAY, own))
    rows = pd.concat(parts).loc[frame.index]
    assert list(rows.columns) == ["trans_num", *MERCHANT_FEATURES]
    pd.testing.assert_frame_equal(rows, whole[list(rows.columns)], check_exact=True)
    # and the frame has merchant risk to compare (frauds counted, some undone by reversals)
    assert whole["merch_fraud_cnt_30d"].max() > 0


def test_labels_at_the_delay_are_the_default_of_both(frame: pd.DataFrame) -> None:
    whole = build_features(frame, DELAY)
    rows = merchant_features(frame, DELAY)
    pd.testing.assert_frame_equal(rows, whole[list(rows.columns)], check_exact=True)


def test_empty_frames_keep_their_columns(frame: pd.DataFrame) -> None:
    empty = frame.iloc[:0]
    assert list(card_features(empty).columns) == [*ID_COLUMNS, LABEL_COLUMN, *CARD_FEATURES]
    assert list(merchant_features(empty).columns) == ["trans_num", *MERCHANT_FEATURES]
