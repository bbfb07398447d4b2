"""The feature specification: window bounds, empty-window constants and the feature order.

Both paths import this module: the offline pipeline (``training.dataset``) and the scorer
(``handlers.predict``). See ``docs/features.md`` for the semantics in prose.

Semantics (all times are integer epoch seconds, UTC):

* A transaction at time ``t`` sees the card's events ``e`` with ``t - w <= t_e < t``: its own
  event and same-second ties are excluded.
* Merchant volume at ``t`` counts the merchant's transactions in ``[t - w, t)``.
* Merchant risk at ``t`` uses the merchant's transactions in ``[t - delay - w, t - delay)`` and
  the frauds among them whose label arrived before ``t``.
* Empty windows give the constants in ``EMPTY``; nothing is ever NaN.
"""

import hashlib
from typing import Final

HOUR: Final = 3600
DAY: Final = 24 * HOUR

#: Card windows: (suffix, seconds).
CARD_WINDOWS: Final[tuple[tuple[str, int], ...]] = (
    ("1h", HOUR),
    ("6h", 6 * HOUR),
    ("24h", DAY),
    ("7d", 7 * DAY),
    ("30d", 30 * DAY),
)
MAX_CARD_WINDOW: Final = max(seconds for _, seconds in CARD_WINDOWS)
#: Window of the distinct-merchant / distinct-category counts.
DISTINCT_WINDOW: Final = DAY
#: ``card_distinct_merchants_24h`` counts distinct merchants up to this many: a card at more
#: merchants in a day is as unusual at 32 as at 500, and the cap lets the online store answer
#: from a bounded structure (per-hour tiles keep at most this many merchants) whatever the
#: card's activity. Categories (14) need no cap.
DISTINCT_MERCHANTS_CAP: Final = 32
#: Merchant volume windows (no delay) and risk windows (shifted back by the label delay).
MERCHANT_VOLUME_WINDOWS: Final[tuple[tuple[str, int], ...]] = (("24h", DAY), ("7d", 7 * DAY))
MERCHANT_RISK_WINDOWS: Final[tuple[tuple[str, int], ...]] = (("7d", 7 * DAY), ("30d", 30 * DAY))
MAX_MERCHANT_RISK_WINDOW: Final = max(seconds for _, seconds in MERCHANT_RISK_WINDOWS)
#: Default label delay: a chargeback is known 7 days after its transaction.
DEFAULT_LABEL_DELAY: Final = 7 * DAY
#: Extra history kept online beyond the longest window, so that a request up to this much
#: older than the newest applied event still sees exact windows (out-of-order tolerance).
HISTORY_SLACK: Final = DAY
#: How long a card's date of birth is remembered: ``age_years`` uses the dob of the card's latest
#: earlier event with one only if that event is at most this old (the online card profile
#: expires then; a card is reissued within about three years, a dob seen once a year stays known).
DOB_RETENTION: Final = 400 * DAY
#: Default bound on how far an event may be dated after the time the system received it.
MAX_CLOCK_SKEW: Final = 300

#: Hours counted as night: [22:00, 06:00).
NIGHT_START_HOUR: Final = 22
NIGHT_END_HOUR: Final = 6
SECONDS_PER_YEAR: Final = 365.2425 * DAY

#: The 14 Sparkov categories of the Kaggle data set; the category code is the index here.
CATEGORIES: Final[tuple[str, ...]] = (
    "entertainment",
    "food_dining",
    "gas_transport",
    "grocery_net",
    "grocery_pos",
    "health_fitness",
    "home",
    "kids_pets",
    "misc_net",
    "misc_pos",
    "personal_care",
    "shopping_net",
    "shopping_pos",
    "travel",
)
CATEGORY_CODE: Final[dict[str, int]] = {name: code for code, name in enumerate(CATEGORIES)}
ONLINE_CATEGORIES: Final = frozenset({"grocery_net", "misc_net", "shopping_net"})

#: Values of features whose inputs are empty (no history, unknown date of birth).
EMPTY: Final[dict[str, float]] = {
    "mean": 0.0,  # mean amount of an empty window
    "max": 0.0,  # max amount of an empty window
    "std": 0.0,  # population std of a window with fewer than two events is 0
    "amt_ratio": 1.0,  # amount / 30d mean with no 30d history: neutral
    "amt_zscore": 0.0,  # (amount - 30d mean) / 30d std with std 0 or no history
    "secs_since_prev": float(MAX_CARD_WINDOW),  # no earlier event within 30 days
    "speed_kmh": 0.0,  # no earlier event within 30 days
    "fraud_rate": 0.0,  # merchant with no transactions in the delayed window
    "age_years": -1.0,  # date of birth unknown
}


def _feature_names() -> tuple[str, ...]:
    names = [
        "amt",
        "amt_log",
        "category_code",
        "is_online_category",
        "hour",
        "is_night",
        "day_of_week",
        "is_weekend",
        "age_years",
        "city_pop_log",
        "dist_home_km",
    ]
    for suffix, _ in CARD_WINDOWS:
        names += [f"card_{stat}_{suffix}" for stat in ("cnt", "sum", "mean", "max", "std")]
    names += [
        "card_amt_ratio_30d",
        "card_amt_zscore_30d",
        "card_secs_since_prev",
        "card_speed_kmh",
        "card_distinct_merchants_24h",
        "card_distinct_categories_24h",
    ]
    names += [f"merch_cnt_{suffix}" for suffix, _ in MERCHANT_VOLUME_WINDOWS]
    names += [f"merch_fraud_rate_{suffix}" for suffix, _ in MERCHANT_RISK_WINDOWS]
    names += [f"merch_fraud_cnt_{suffix}" for suffix, _ in MERCHANT_RISK_WINDOWS]
    return tuple(names)


FEATURE_NAMES: Final[tuple[str, ...]] = _feature_names()
#: Features that only need the request itself (used in degraded mode and by the baseline model).
REQUEST_ONLY_FEATURES: Final[tuple[str, ...]] = FEATURE_NAMES[:11]


def _spec_version() -> str:
    text = repr(
        (
            FEATURE_NAMES,
            CARD_WINDOWS,
            DISTINCT_WINDOW,
            DISTINCT_MERCHANTS_CAP,
            MERCHANT_VOLUME_WINDOWS,
            MERCHANT_RISK_WINDOWS,
            sorted(EMPTY.items()),
            CATEGORIES,
            (NIGHT_START_HOUR, NIGHT_END_HOUR, SECONDS_PER_YEAR),
            DOB_RETENTION,
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


#: Changes whenever a feature's definition changes; a model trained on another version is refused.
FEATURE_SPEC_VERSION: Final[str] = _spec_version()
