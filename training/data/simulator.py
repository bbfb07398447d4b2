"""Seeded credit-card transaction simulator writing the Kaggle (Sparkov) schema.

Cardholders live in US towns (`reference.PLACES`), each with a spending profile per category
(how often, how much: lognormal amounts, a personal multiplier, occasional big tickets) and
an activity level; transactions follow a non-homogeneous Poisson process per card and
category (daily, weekly and seasonal rhythms, few at night). Merchants are chains in one of
the 14 categories: in-person purchases happen at a store near the cardholder (or near a trip
destination during legitimate trips); online ones, like Kaggle's, also carry coordinates near
the cardholder (the recorded billing/IP location). Four fraud scenarios are injected and
labelled `is_fraud=1` (see `SCENARIOS` and docs/data.md).

Everything is vectorized with numpy (no per-transaction Python loops) and deterministic
given `SimulatorConfig.seed` (for a given numpy version).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final, NamedTuple, Self

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from training.data import reference as ref
from training.data.schema import (
    CANONICAL_COLUMNS,
    CATEGORIES,
    ONLINE_CATEGORIES,
    timestamp_strings,
    validate_frame,
)

type F64 = npt.NDArray[np.float64]
type I64 = npt.NDArray[np.int64]
type Mask = npt.NDArray[np.bool_]

SCENARIOS: Final[tuple[str, ...]] = (
    "legit",
    "stolen_card",
    "card_testing",
    "compromised_merchant",
    "geo_jump",
)
"""Scenario codes: index 0 is legitimate, the others are the fraud scenarios."""
FRAUD_SCENARIOS: Final[tuple[str, ...]] = SCENARIOS[1:]

KAGGLE_UNIX_TIME_OFFSET: Final = 2557 * 86_400
"""Kaggle's unix_time is its timestamp minus 2557 days (2019-01-01 -> 2012-01-01); mimicked, never used."""

_DAY: Final = 86_400
_HOUR: Final = 3_600
_MINUTE: Final = 60
_STOLEN, _TESTING, _COMPROMISED, _GEO = 1, 2, 3, 4
_CAT: Final = {name: code for code, name in enumerate(CATEGORIES)}
_ONLINE_CODES: Final = np.array([_CAT[c] for c in ONLINE_CATEGORIES])


class FraudRates(BaseModel):
    """How often each fraud scenario starts. With a rate > 0 each scenario happens at least once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stolen_card_per_card_year: float = Field(default=0.3, ge=0)
    card_testing_per_card_year: float = Field(default=0.2, ge=0)
    compromised_merchant_per_merchant_year: float = Field(default=0.02, ge=0)
    compromised_fraud_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="mean share of a compromised merchant's transactions that are fraud",
    )
    compromised_followup_prob: float = Field(
        default=0.3, ge=0, le=1, description="chance a card used there during the compromise sees fraud later"
    )
    geo_jump_per_card_year: float = Field(default=0.2, ge=0)


class SimulatorConfig(BaseModel):
    """Size and behaviour of a simulation. Defaults: the demo size (~150k rows, seconds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 42
    n_cards: int = Field(default=500, ge=1)
    n_merchants: int = Field(default=300, ge=len(CATEGORIES))
    start_date: date = date(2019, 1, 1)
    n_days: int = Field(default=120, ge=1)
    tx_per_card_day: float = Field(
        default=2.47, gt=0, description="mean legitimate transactions per card-day"
    )
    trips_per_card_year: float = Field(default=1.5, ge=0, description="legitimate trips far from home")
    fraud: FraudRates = FraudRates()

    @classmethod
    def kaggle_scale(cls, seed: int = 42) -> Self:
        """~1,000 cards, 700 merchants, 2019-01-01..2020-12-31: ~1.85M rows like fraudTrain+fraudTest."""
        return cls(seed=seed, n_cards=1_000, n_merchants=700, n_days=731)


def kaggle_scale(seed: int = 42) -> SimulatorConfig:
    """The Kaggle-sized preset (see `SimulatorConfig.kaggle_scale`)."""
    return SimulatorConfig.kaggle_scale(seed)


class SimulationSummary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rows: int
    frauds: int
    fraud_rate: float
    cards: int
    merchants: int
    scenario_counts: dict[str, int]
    first_event_time: int | None
    last_event_time: int | None
    seconds: float


@dataclass(frozen=True)
class Simulation:
    """A simulated canonical frame and, row for row, the scenario that produced each row."""

    config: SimulatorConfig
    transactions: pd.DataFrame
    scenario: pd.Series
    seconds: float

    def summary(self) -> SimulationSummary:
        frame = self.transactions
        counts = self.scenario.value_counts()
        frauds = int(frame["is_fraud"].sum())
        return SimulationSummary(
            rows=len(frame),
            frauds=frauds,
            fraud_rate=round(frauds / max(len(frame), 1), 6),
            cards=int(frame["cc_num"].nunique()),
            merchants=int(frame["merchant"].nunique()),
            scenario_counts={name: int(counts.get(name, 0)) for name in SCENARIOS},
            first_event_time=int(frame["event_time"].iloc[0]) if len(frame) else None,
            last_event_time=int(frame["event_time"].iloc[-1]) if len(frame) else None,
            seconds=round(self.seconds, 3),
        )


def simulate(cfg: SimulatorConfig | None = None) -> pd.DataFrame:
    """The canonical transaction frame of a simulation (default config: the demo size)."""
    return run_simulation(cfg).transactions


def run_simulation(cfg: SimulatorConfig | None = None) -> Simulation:
    """Simulate and keep the per-row fraud scenario (for tests and per-scenario evaluation)."""
    cfg = cfg or SimulatorConfig()
    started = time.perf_counter()
    streams = iter(np.random.default_rng(child) for child in np.random.SeedSequence(cfg.seed).spawn(10))
    world = _World(cfg)
    cards = _make_cards(cfg, next(streams))
    merchants = _make_merchants(cfg, next(streams))
    legit = _legit_transactions(cfg, world, cards, merchants, next(streams))
    legit = _apply_trips(cfg, world, cards, merchants, legit, next(streams))
    legit = _place_stores(cards, merchants, legit, next(streams))
    parts = [
        legit,
        _stolen_card_bursts(cfg, world, cards, merchants, next(streams)),
        _card_testing(cfg, world, cards, merchants, next(streams)),
        _geo_jumps(cfg, world, cards, merchants, legit, next(streams)),
    ]
    parts[0], followups = _compromised_merchants(cfg, world, cards, merchants, legit, next(streams))
    parts.append(followups)
    tx = _Tx.concat(parts).within(world.t0, world.t1)
    frame, scenario = _to_frame(tx, cards, merchants, next(streams))
    return Simulation(cfg, frame, scenario, time.perf_counter() - started)


def simulate_to_csv(
    cfg: SimulatorConfig | None,
    path: str | os.PathLike[str],
    *,
    scenarios_path: str | os.PathLike[str] | None = None,
) -> SimulationSummary:
    """Simulate and write a Kaggle-format CSV; optionally `trans_num,scenario` of the frauds too."""
    from training.data.kaggle import write_transactions_csv

    simulation = run_simulation(cfg)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_transactions_csv(simulation.transactions, path)
    if scenarios_path is not None:
        fraud = simulation.transactions["is_fraud"].to_numpy() == 1
        pd.DataFrame(
            {"trans_num": simulation.transactions["trans_num"][fraud], "scenario": simulation.scenario[fraud]}
        ).to_csv(scenarios_path, index=False)
    return simulation.summary()


class _Profile(NamedTuple):
    share: float  # relative frequency (Kaggle's category counts, in thousands)
    median: float  # median amount, USD
    sigma: float  # lognormal sigma of amounts
    hours: str  # hour-of-day profile
    weekend: float  # Saturday/Sunday intensity factor
    store_km: float  # median distance from the cardholder to the recorded merchant location
    big_ticket: float  # share of occasional big purchases (median $600)


_PROFILES: Final[dict[str, _Profile]] = {
    "entertainment": _Profile(134, 43.0, 0.9, "evening", 1.5, 8.0, 0.01),
    "food_dining": _Profile(131, 37.0, 0.8, "meal", 1.3, 5.0, 0.0),
    "gas_transport": _Profile(188, 53.0, 0.6, "commute", 0.85, 6.0, 0.0),
    "grocery_net": _Profile(65, 42.0, 0.7, "online", 1.1, 40.0, 0.0),
    "grocery_pos": _Profile(176, 91.0, 0.7, "day", 1.3, 4.0, 0.0),
    "health_fitness": _Profile(123, 39.0, 0.8, "day", 0.9, 6.0, 0.005),
    "home": _Profile(175, 39.0, 0.9, "day", 1.35, 8.0, 0.03),
    "kids_pets": _Profile(161, 39.0, 0.9, "day", 1.3, 6.0, 0.01),
    "misc_net": _Profile(90, 48.0, 1.0, "online", 1.0, 40.0, 0.02),
    "misc_pos": _Profile(114, 42.0, 0.9, "day", 1.1, 6.0, 0.01),
    "personal_care": _Profile(130, 35.0, 0.8, "day", 1.2, 5.0, 0.0),
    "shopping_net": _Profile(139, 53.0, 1.0, "online", 1.15, 40.0, 0.04),
    "shopping_pos": _Profile(167, 47.0, 1.0, "day", 1.4, 10.0, 0.03),
    "travel": _Profile(58, 61.0, 1.1, "travel", 1.2, 15.0, 0.08),
}

# fmt: off
_HOURS: Final[dict[str, tuple[float, ...]]] = {  # relative intensity by hour of day, 0..23
    "day": (.15, .1, .08, .08, .1, .2, .5, 1, 1.8, 2.4, 2.8, 3,
            3.2, 3.1, 3, 3, 3, 3.1, 3, 2.6, 2, 1.4, .8, .4),
    "meal": (.3, .15, .1, .08, .1, .3, .9, 1.6, 1.5, 1.2, 1.5, 3.2,
             4, 3, 1.4, 1.2, 1.6, 2.8, 3.8, 3.6, 2.6, 1.6, .9, .5),
    "evening": (1.2, .8, .4, .15, .1, .1, .15, .3, .4, .5, .8, 1.2,
                1.6, 1.6, 1.6, 1.8, 2.2, 3, 3.8, 4.2, 4.2, 3.6, 2.8, 1.8),
    "commute": (.3, .2, .15, .15, .3, 1, 2.4, 3.2, 2.8, 2, 1.8, 2,
                2.2, 2, 2, 2.4, 3, 3.2, 2.6, 1.8, 1.3, .9, .6, .4),
    "online": (.9, .6, .45, .35, .3, .35, .6, 1, 1.4, 1.7, 1.9, 2,
               2.1, 2, 2, 2, 2.1, 2.3, 2.6, 2.9, 3.1, 3, 2.4, 1.6),
    "travel": (.3, .2, .2, .3, .6, 1.2, 2, 2.4, 2.4, 2.3, 2.2, 2.2,
               2.2, 2.2, 2.2, 2.2, 2.2, 2.2, 2, 1.8, 1.5, 1.1, .7, .4),
}
_NIGHT_START_HOURS: Final = (21, 22, 23, 0, 1, 2, 3, 4)
_NIGHT_WEIGHTS: Final = (.5, 1, 1.5, 1.5, 1.3, 1, .6, .3)
# fmt: on
_RETAIL: Final = ("home", "kids_pets", "misc_net", "misc_pos", "shopping_net", "shopping_pos")
_GEO_CATEGORIES: Final = (
    "shopping_pos",
    "misc_pos",
    "gas_transport",
    "grocery_pos",
    "food_dining",
    "travel",
    "entertainment",
)
_GEO_WEIGHTS: Final = (0.3, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1)


class _World:
    """Calendar and per-category intensity shapes of one configuration."""

    def __init__(self, cfg: SimulatorConfig):
        midnight = datetime(cfg.start_date.year, cfg.start_date.month, cfg.start_date.day, tzinfo=UTC)
        self.t0 = int(midnight.timestamp())
        self.t1 = self.t0 + cfg.n_days * _DAY
        self.n_days = cfg.n_days
        self.years = cfg.n_days / 365.25
        days = np.datetime64(cfg.start_date.isoformat(), "D") + np.arange(cfg.n_days)
        weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        month = days.astype("datetime64[M]").astype(np.int64) % 12  # 0 = January
        shares = np.array([_PROFILES[c].share for c in CATEGORIES])
        self.category_share = shares / shares.sum()
        self.day_cdf: list[F64] = []
        self.hour_cdf: list[F64] = []
        for name in CATEGORIES:
            profile = _PROFILES[name]
            factor = np.ones(cfg.n_days)
            factor[weekday >= 5] = profile.weekend
            if name in ("entertainment", "food_dining"):
                factor[weekday == 4] = (1 + profile.weekend) / 2
            factor[month <= 1] *= 0.9
            if name in _RETAIL:
                factor[month == 10] *= 1.1
                factor[month == 11] *= 1.35
            if name == "travel":
                factor[(month >= 5) & (month <= 7)] *= 1.3
                factor[month == 11] *= 1.2
            self.day_cdf.append(_cdf(factor))
            self.hour_cdf.append(_cdf(np.array(_HOURS[profile.hours])))
        self.night_cdf = _cdf(np.array(_NIGHT_WEIGHTS))


@dataclass(frozen=True)
class _Cards:
    lat: F64
    long: F64
    place: I64
    age: F64
    female: Mask
    activity: F64  # legitimate transactions per day
    preference: F64  # (n_cards, 14) share of each category, rows sum to 1
    spend: F64  # personal amount multiplier
    text: dict[str, list[str]]  # cc_num, first, last, gender, street, city, state, job, dob
    zip: I64
    city_pop: I64


@dataclass(frozen=True)
class _Merchants:
    category: I64
    names: list[str]
    by_category: list[I64]  # merchant ids per category code
    popularity_cdf: list[F64]  # cumulative popularity within the category


@dataclass(frozen=True)
class _Tx:
    card: I64
    merchant: I64
    time: I64
    amt: F64
    lat: F64  # merchant coordinates of this transaction (NaN until placed)
    long: F64
    scenario: npt.NDArray[np.int8]
    trip: I64  # legitimate trip index or -1

    @classmethod
    def make(
        cls,
        card: I64,
        merchant: I64,
        t: I64,
        amt: F64,
        scenario: int,
        lat: F64 | None = None,
        long: F64 | None = None,
    ) -> _Tx:
        n = len(card)
        nan = np.full(n, np.nan)
        return cls(
            card.astype(np.int64),
            merchant.astype(np.int64),
            t.astype(np.int64),
            amt,
            nan if lat is None else lat,
            nan if long is None else long,
            np.full(n, scenario, dtype=np.int8),
            np.full(n, -1, dtype=np.int64),
        )

    @classmethod
    def empty(cls, scenario: int) -> _Tx:
        nothing = np.zeros(0, dtype=np.int64)
        return cls.make(nothing, nothing, nothing, np.zeros(0), scenario)

    @classmethod
    def concat(cls, parts: list[_Tx]) -> _Tx:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in _TX_FIELDS))

    def take(self, index: I64 | Mask) -> _Tx:
        return _Tx(*(getattr(self, f)[index] for f in _TX_FIELDS))

    def within(self, t0: int, t1: int) -> _Tx:
        return self.take((self.time >= t0) & (self.time < t1))

    def __len__(self) -> int:
        return len(self.card)


_TX_FIELDS: Final = ("card", "merchant", "time", "amt", "lat", "long", "scenario", "trip")


def _cdf(weights: npt.ArrayLike) -> F64:
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
    result: F64 = cumulative / cumulative[-1]
    return result


def _draw(cdf: F64, rng: np.random.Generator, size: int | tuple[int, ...]) -> I64:
    """Indices drawn with the probabilities behind `cdf` (inverse transform sampling)."""
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1).astype(np.int64)


def _haversine_km(lat1: F64, lon1: F64, lat2: F64, lon2: F64) -> F64:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    distance: F64 = 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    return distance


def _offset(lat: F64, long: F64, km: F64, bearing: F64) -> tuple[F64, F64]:
    """Points `km` away from (lat, long) towards `bearing` (radians), rounded like Kaggle (6 decimals)."""
    new_lat = np.clip(lat + km * np.cos(bearing) / 110.574, -89.9, 89.9)
    new_long = long + km * np.sin(bearing) / (111.320 * np.maximum(np.cos(np.radians(lat)), 0.05))
    new_long = (new_long + 180) % 360 - 180
    return np.round(new_lat, 6), np.round(new_long, 6)


def _place_arrays() -> tuple[F64, F64, F64]:
    lat = np.array([p.lat for p in ref.PLACES])
    long = np.array([p.long for p in ref.PLACES])
    pop = np.array([p.population for p in ref.PLACES], dtype=np.float64)
    return lat, long, pop


def _far_places(lat: F64, long: F64, min_km: float, rng: np.random.Generator) -> I64:
    """For each point, a place at least `min_km` away (bigger places more likely)."""
    place_lat, place_long, pop = _place_arrays()
    distance = _haversine_km(lat[:, None], long[:, None], place_lat[None, :], place_long[None, :])
    weights = np.where(distance >= min_km, np.sqrt(pop)[None, :], 0.0)
    weights[weights.sum(axis=1) == 0] = np.sqrt(pop)  # nowhere far enough: anywhere
    cumulative = np.cumsum(weights, axis=1)
    u = rng.random(len(lat)) * cumulative[:, -1]
    return (cumulative < u[:, None]).sum(axis=1).astype(np.int64)


def _luhn_complete(digits: list[int]) -> str:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if position % 2 == 0 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


_CARD_KINDS: Final = (  # (prefix, length, weight): Visa, Mastercard, Amex, Discover, JCB, Diners, Maestro
    ("4", 16, 0.30),
    ("4", 13, 0.05),
    ("4", 19, 0.05),
    ("51", 16, 0.10),
    ("55", 16, 0.10),
    ("34", 15, 0.05),
    ("37", 15, 0.05),
    ("6011", 16, 0.10),
    ("3528", 16, 0.05),
    ("36", 14, 0.05),
    ("6304", 12, 0.05),
    ("50", 12, 0.05),
)


def _card_numbers(n: int, rng: np.random.Generator) -> list[str]:
    kinds = _draw(_cdf(np.array([w for _, _, w in _CARD_KINDS])), rng, n)
    numbers: list[str] = []
    seen: set[str] = set()
    for kind in kinds.tolist():
        prefix, length, _ = _CARD_KINDS[kind]
        while True:
            body = [int(c) for c in prefix] + rng.integers(0, 10, length - len(prefix) - 1).tolist()
            number = _luhn_complete(body)
            if number not in seen:
                seen.add(number)
                numbers.append(number)
                break
    return numbers


def _make_cards(cfg: SimulatorConfig, rng: np.random.Generator) -> _Cards:
    n = cfg.n_cards
    place_lat, place_long, pop = _place_arrays()
    place = _draw(_cdf(pop**0.3), rng, n)
    lat = np.round(place_lat[place] + rng.normal(0, 0.08, n), 4)
    long = np.round(place_long[place] + rng.normal(0, 0.08, n), 4)
    age = np.clip(18 + rng.gamma(3.0, 9.5, n), 18, 95)
    female = rng.random(n) < 0.55
    city_pop = pop[place].astype(np.int64)
    preference = np.tile(np.array([_PROFILES[c].share for c in CATEGORIES], dtype=np.float64), (n, 1))
    preference *= rng.gamma(3.0, 1 / 3, preference.shape)
    online = np.array([c in ONLINE_CATEGORIES for c in CATEGORIES])
    preference[:, online] *= np.where(age < 35, 1.5, np.where(age > 60, 0.6, 1.0))[:, None]
    preference[:, _CAT["kids_pets"]] *= np.where((age >= 28) & (age <= 50), 1.6, np.where(age > 65, 0.7, 1.0))
    preference[:, _CAT["health_fitness"]] *= np.where(age < 45, 1.3, 1.0)
    preference[:, _CAT["entertainment"]] *= np.where(age < 40, 1.3, 1.0)
    preference[:, _CAT["personal_care"]] *= np.where(female, 1.3, 1.0)
    preference[:, _CAT["travel"]] *= np.where(city_pop > 300_000, 1.3, 1.0) * np.where(age > 55, 1.2, 1.0)
    preference[:, _CAT["gas_transport"]] *= np.where(city_pop < 50_000, 1.3, 1.0)
    preference /= preference.sum(axis=1, keepdims=True)
    activity = cfg.tx_per_card_day * rng.gamma(2.0, 0.5, n)
    spend = rng.lognormal(0.0, 0.35, n)
    first = [
        ref.FEMALE_FIRST_NAMES[int(u * len(ref.FEMALE_FIRST_NAMES))]
        if f
        else ref.MALE_FIRST_NAMES[int(u * len(ref.MALE_FIRST_NAMES))]
        for f, u in zip(female.tolist(), rng.random(n).tolist(), strict=True)
    ]
    last = [ref.LAST_NAMES[i] for i in rng.integers(0, len(ref.LAST_NAMES), n).tolist()]
    numbers = np.floor(rng.lognormal(7.0, 1.5, n)).astype(np.int64) % 99_999 + 1
    street_names = rng.integers(0, len(ref.STREET_NAMES), n).tolist()
    suffixes = rng.integers(0, len(ref.STREET_SUFFIXES), n).tolist()
    units = rng.integers(1, 999, n).tolist()
    unit_kind = rng.random(n)
    street = [
        f"{num} {ref.STREET_NAMES[s]} {ref.STREET_SUFFIXES[x]}"
        + (f" Suite {u}" if k < 0.15 else f" Apt. {u}" if k < 0.25 else "")
        for num, s, x, u, k in zip(
            numbers.tolist(), street_names, suffixes, units, unit_kind.tolist(), strict=True
        )
    ]
    dob = [
        (cfg.start_date - timedelta(days=int(a * 365.25))).isoformat() for a in (age + rng.random(n)).tolist()
    ]
    places = [ref.PLACES[p] for p in place.tolist()]
    zips = np.array([p.zip for p in places], dtype=np.int64) + rng.integers(0, 20, n)
    text = {
        "cc_num": _card_numbers(n, rng),
        "first": first,
        "last": last,
        "gender": ["F" if f else "M" for f in female.tolist()],
        "street": street,
        "city": [p.city for p in places],
        "state": [p.state for p in places],
        "job": [ref.JOBS[i] for i in rng.integers(0, len(ref.JOBS), n).tolist()],
        "dob": dob,
    }
    return _Cards(
        lat, long, place, age, female, activity, preference, spend, text, np.minimum(zips, 99_999), city_pop
    )


def _merchant_names(n: int, rng: np.random.Generator) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    companies = ref.COMPANY_NAMES
    while len(names) < n:
        a, b, c = (companies[i] for i in rng.integers(0, len(companies), 3).tolist())
        style = int(rng.integers(0, 3))
        suffix = ref.COMPANY_SUFFIXES[int(rng.integers(0, len(ref.COMPANY_SUFFIXES)))]
        name = "fraud_" + (
            f"{a} {suffix}" if style == 0 else f"{a}-{b}" if style == 1 else f"{a}, {b} and {c}"
        )
        if name not in seen and len({a, b, c}) == 3:
            seen.add(name)
            names.append(name)
    return names


def _make_merchants(cfg: SimulatorConfig, rng: np.random.Generator) -> _Merchants:
    n = cfg.n_merchants
    shares = np.array([_PROFILES[c].share for c in CATEGORIES])
    category = np.concatenate([np.arange(len(CATEGORIES)), _draw(_cdf(shares), rng, n - len(CATEGORIES))])
    category = rng.permutation(category).astype(np.int64)
    by_category: list[I64] = []
    popularity: list[F64] = []
    for code in range(len(CATEGORIES)):
        members = rng.permutation(np.flatnonzero(category == code)).astype(np.int64)
        by_category.append(members)
        popularity.append(_cdf(1.0 / np.arange(1, len(members) + 1) ** 0.9))
    return _Merchants(category, _merchant_names(n, rng), by_category, popularity)


def _pick_merchants(merchants: _Merchants, code: int, size: int, rng: np.random.Generator) -> I64:
    return merchants.by_category[code][_draw(merchants.popularity_cdf[code], rng, size)]


def _amounts(code: int, size: int, rng: np.random.Generator, multiplier: F64 | float = 1.0) -> F64:
    profile = _PROFILES[CATEGORIES[code]]
    amount = profile.median * rng.lognormal(0.0, profile.sigma, size)
    big = rng.random(size) < profile.big_ticket
    amount[big] = rng.lognormal(np.log(600.0), 0.6, int(big.sum()))
    return np.round(np.maximum(amount * multiplier, 1.0), 2)


def _legit_transactions(
    cfg: SimulatorConfig, world: _World, cards: _Cards, merchants: _Merchants, rng: np.random.Generator
) -> _Tx:
    n_cat = len(CATEGORIES)
    expected = cards.activity[:, None] * cards.preference * world.n_days
    counts = rng.poisson(expected).ravel()
    card_of = np.repeat(np.repeat(np.arange(cfg.n_cards), n_cat), counts)
    code_of = np.repeat(np.tile(np.arange(n_cat), cfg.n_cards), counts)
    favourites = np.stack(
        [
            _pick_merchants(merchants, code, cfg.n_cards * 3, rng).reshape(cfg.n_cards, 3)
            for code in range(n_cat)
        ],
        axis=1,
    )  # (cards, categories, 3)
    favourite_cdf = _cdf(np.array([0.55, 0.3, 0.15]))
    parts: list[_Tx] = []
    for code in range(n_cat):
        card = card_of[code_of == code]
        size = len(card)
        day = _draw(world.day_cdf[code], rng, size)
        hour = _draw(world.hour_cdf[code], rng, size)
        t = world.t0 + day * _DAY + hour * _HOUR + rng.integers(0, _HOUR, size)
        favourite = favourites[card, code, _draw(favourite_cdf, rng, size)]
        merchant = np.where(rng.random(size) < 0.75, favourite, _pick_merchants(merchants, code, size, rng))
        parts.append(_Tx.make(card, merchant, t, _amounts(code, size, rng, cards.spend[card]), 0))
    return _Tx.concat(parts)


def _apply_trips(
    cfg: SimulatorConfig,
    world: _World,
    cards: _Cards,
    merchants: _Merchants,
    legit: _Tx,
    rng: np.random.Generator,
) -> _Tx:
    """Legitimate travel: in-person spending moves to a far place; booking and hotel rows are added."""
    n_trips = rng.poisson(cfg.trips_per_card_year * world.years, cfg.n_cards)
    trip_card = np.repeat(np.arange(cfg.n_cards), n_trips)
    if len(trip_card) == 0:
        return legit
    start = world.t0 + rng.integers(0, world.t1 - world.t0, len(trip_card))
    order = np.lexsort((start, trip_card))
    trip_card, start = trip_card[order], start[order]
    destination = _far_places(cards.lat[trip_card], cards.long[trip_card], 300.0, rng)
    place_lat, place_long, _ = _place_arrays()
    dest_lat = place_lat[destination] + rng.normal(0, 0.05, len(trip_card))
    dest_long = place_long[destination] + rng.normal(0, 0.05, len(trip_card))
    km = _haversine_km(cards.lat[trip_card], cards.long[trip_card], dest_lat, dest_long)
    # door to door: a flight at 500-800 km/h (or a drive) plus 1.5-4 hours of getting there
    hours = km / rng.uniform(500.0, 800.0, len(trip_card)) + rng.uniform(1.5, 4.0, len(trip_card))
    arrive = start + (hours * _HOUR).astype(np.int64)
    end = arrive + (2 + np.minimum(rng.poisson(3.0, len(trip_card)), 12)) * _DAY
    span = np.int64(world.t1 - world.t0 + 30 * _DAY)
    trip_key = trip_card * span + (start - world.t0)
    tx_key = legit.card * span + (legit.time - world.t0)
    trip = np.searchsorted(trip_key, tx_key, side="right") - 1
    valid = trip >= 0
    trip = np.where(valid, trip, 0)
    valid &= (trip_card[trip] == legit.card) & (legit.time < end[trip])
    in_transit = valid & (legit.time < arrive[trip])
    legit = replace(legit, trip=np.where(valid & ~in_transit, trip, -1)).take(~in_transit)
    travel = _CAT["travel"]
    booking_time = start - rng.integers(_HOUR, 72 * _HOUR, len(trip_card))
    booking = _Tx.make(
        trip_card,
        _pick_merchants(merchants, travel, len(trip_card), rng),
        booking_time,
        _amounts(travel, len(trip_card), rng, 4.0 * cards.spend[trip_card]),
        0,
    )
    hotel_time = arrive + rng.integers(20 * _MINUTE, 3 * _HOUR, len(trip_card))
    hotel = _Tx.make(
        trip_card,
        _pick_merchants(merchants, travel, len(trip_card), rng),
        hotel_time,
        _amounts(travel, len(trip_card), rng, 2.5 * cards.spend[trip_card]),
        0,
    )
    hotel = replace(hotel, trip=np.arange(len(trip_card), dtype=np.int64))
    placed = _Tx.concat([legit, booking, hotel])
    lat, long = _centres(placed, cards, dest_lat, dest_long)
    return replace(placed, lat=lat, long=long)


def _centres(tx: _Tx, cards: _Cards, dest_lat: F64, dest_long: F64) -> tuple[F64, F64]:
    on_trip = tx.trip >= 0
    trip = np.maximum(tx.trip, 0)
    lat = np.where(on_trip, dest_lat[trip], cards.lat[tx.card])
    long = np.where(on_trip, dest_long[trip], cards.long[tx.card])
    return lat, long


def _place_stores(cards: _Cards, merchants: _Merchants, tx: _Tx, rng: np.random.Generator) -> _Tx:
    """Merchant coordinates: one location per (card, merchant, trip), near where the cardholder is.

    Like Kaggle, every transaction (online ones included) carries coordinates near the
    cardholder: a store for in-person categories, the recorded (billing/IP) location online.
    """
    centre_lat = np.where(np.isnan(tx.lat), cards.lat[tx.card], tx.lat)
    centre_long = np.where(np.isnan(tx.long), cards.long[tx.card], tx.long)
    key = (tx.card * len(merchants.category) + tx.merchant) * (tx.trip.max(initial=0) + 2) + (tx.trip + 1)
    unique, inverse = np.unique(key, return_inverse=True)
    store_km = np.array([_PROFILES[c].store_km for c in CATEGORIES])[merchants.category[tx.merchant]]
    distance = np.minimum(store_km * rng.lognormal(0.0, 0.6, len(unique))[inverse], 110.0)
    bearing = rng.uniform(0, 2 * np.pi, len(unique))[inverse]
    lat, long = _offset(centre_lat, centre_long, distance, bearing)
    return replace(tx, lat=lat, long=long)


def _fraud_locations(
    cards: _Cards, card: I64, local_share: float, rng: np.random.Generator
) -> tuple[F64, F64]:
    """Where card-not-present fraud is recorded: near the victim (a proxy) or at the fraudster's town."""
    n = len(card)
    near_lat, near_long = _offset(
        cards.lat[card],
        cards.long[card],
        np.minimum(rng.lognormal(np.log(40.0), 0.6, n), 110.0),
        rng.uniform(0, 2 * np.pi, n),
    )
    place_lat, place_long, pop = _place_arrays()
    town = _draw(_cdf(np.sqrt(pop)), rng, n)
    far_lat, far_long = _offset(
        place_lat[town], place_long[town], rng.lognormal(np.log(5.0), 0.7, n), rng.uniform(0, 2 * np.pi, n)
    )
    local = rng.random(n) < local_share
    return np.where(local, near_lat, far_lat), np.where(local, near_long, far_long)


def _incidents(rate: float, exposure: float, rng: np.random.Generator) -> int:
    return 0 if rate <= 0 else max(1, int(rng.poisson(rate * exposure)))


def _start_hours(world: _World, n: int, night_share: float, rng: np.random.Generator) -> I64:
    """Hours of day: a night hour (21h-4h) with probability `night_share`, else any hour."""
    night = np.array(_NIGHT_START_HOURS)[_draw(world.night_cdf, rng, n)]
    return np.where(rng.random(n) < night_share, night, rng.integers(0, 24, n)).astype(np.int64)


def _bursts(first: I64, sizes: I64, gap_low: int, gap_high: int, rng: np.random.Generator) -> tuple[I64, I64]:
    """Row -> incident index, and times: `first` then cumulative uniform gaps, per incident."""
    incident = np.repeat(np.arange(len(sizes)), sizes)
    gaps = rng.integers(gap_low, gap_high, len(incident))
    starts = np.cumsum(sizes) - sizes
    gaps[starts] = 0
    cumulative = np.cumsum(gaps)
    return incident, first[incident] + cumulative - cumulative[starts][incident]


def _online_rows(
    cards: _Cards,
    merchants: _Merchants,
    card: I64,
    t: I64,
    weights: tuple[float, float, float],
    medians: tuple[float, float, float],
    sigma: float,
    scenario: int,
    rng: np.random.Generator,
) -> _Tx:
    """Card-not-present fraud rows at online merchants; `weights`, `medians` follow ONLINE_CATEGORIES."""
    which = _draw(_cdf(np.array(weights)), rng, len(card))
    merchant = np.empty(len(card), dtype=np.int64)
    for position, code in enumerate(_ONLINE_CODES.tolist()):
        rows = which == position
        merchant[rows] = _pick_merchants(merchants, code, int(rows.sum()), rng)
    median = np.array(medians)[which]
    amt = np.round(np.maximum(median * rng.lognormal(0.0, sigma, len(card)), 1.0), 2)
    lat, long = _fraud_locations(cards, card, 0.5, rng)
    return _Tx.make(card, merchant, t, amt, scenario, lat, long)


def _stolen_card_bursts(
    cfg: SimulatorConfig, world: _World, cards: _Cards, merchants: _Merchants, rng: np.random.Generator
) -> _Tx:
    """(a) Several high online amounts within a few hours, mostly at night."""
    n = _incidents(cfg.fraud.stolen_card_per_card_year, cfg.n_cards * world.years, rng)
    card = rng.integers(0, cfg.n_cards, n)
    hour = _start_hours(world, n, 0.85, rng)
    first = world.t0 + rng.integers(0, world.n_days, n) * _DAY + hour * _HOUR + rng.integers(0, _HOUR, n)
    sizes = np.clip(2 + rng.poisson(3.5, n), 2, 12)
    incident, t = _bursts(first, sizes, 3 * _MINUTE, 50 * _MINUTE, rng)
    # grocery_net, misc_net, shopping_net
    return _online_rows(
        cards, merchants, card[incident], t, (0.15, 0.35, 0.5), (120.0, 350.0, 450.0), 0.6, _STOLEN, rng
    )


def _card_testing(
    cfg: SimulatorConfig, world: _World, cards: _Cards, merchants: _Merchants, rng: np.random.Generator
) -> _Tx:
    """(b) A few $1-3 probes at one online merchant within minutes, then large purchases."""
    n = _incidents(cfg.fraud.card_testing_per_card_year, cfg.n_cards * world.years, rng)
    card = rng.integers(0, cfg.n_cards, n)
    first = world.t0 + rng.integers(0, world.t1 - world.t0, n)
    n_probe = np.clip(2 + rng.poisson(1.0, n), 2, 5)
    incident, t = _bursts(first, n_probe, 20, 10 * _MINUTE, rng)
    probe_merchant = _pick_merchants(merchants, _CAT["misc_net"], n, rng)
    shop = rng.random(n) < 0.35
    probe_merchant[shop] = _pick_merchants(merchants, _CAT["shopping_net"], int(shop.sum()), rng)
    lat, long = _fraud_locations(cards, card, 0.5, rng)
    probes = _Tx.make(
        card[incident],
        probe_merchant[incident],
        t,
        np.round(rng.uniform(1.0, 3.0, len(t)), 2),
        _TESTING,
        lat[incident],
        long[incident],
    )
    last_probe = np.zeros(n, dtype=np.int64)
    np.maximum.at(last_probe, incident, t)
    n_large = np.clip(1 + rng.poisson(1.0, n), 1, 4)
    large_first = last_probe + rng.integers(5 * _MINUTE, 3 * _HOUR, n)
    incident, t = _bursts(large_first, n_large, 2 * _MINUTE, 30 * _MINUTE, rng)
    large = _online_rows(
        cards, merchants, card[incident], t, (0.1, 0.4, 0.5), (250.0, 550.0, 550.0), 0.7, _TESTING, rng
    )
    return _Tx.concat([probes, large])


def _compromised_merchants(
    cfg: SimulatorConfig,
    world: _World,
    cards: _Cards,
    merchants: _Merchants,
    legit: _Tx,
    rng: np.random.Generator,
) -> tuple[_Tx, _Tx]:
    """(c) For some days a share of a merchant's transactions are fraud; its customers see fraud later."""
    n = _incidents(cfg.fraud.compromised_merchant_per_merchant_year, cfg.n_merchants * world.years, rng)
    traffic = np.bincount(legit.merchant, minlength=cfg.n_merchants).astype(np.float64)
    if n == 0 or traffic.sum() == 0:
        return legit, _Tx.empty(_COMPROMISED)
    merchant = _draw(_cdf(np.sqrt(traffic)), rng, n)
    duration = rng.integers(7 * _DAY, 31 * _DAY, n)
    start = world.t0 + (rng.random(n) * np.maximum(world.t1 - world.t0 - duration, 1)).astype(np.int64)
    order = np.lexsort((legit.time, legit.merchant))
    sorted_merchant, sorted_time = legit.merchant[order], legit.time[order]
    scenario, amt = legit.scenario.copy(), legit.amt.copy()
    exposed_card: list[I64] = []
    exposed_time: list[I64] = []
    share = np.clip(rng.normal(cfg.fraud.compromised_fraud_share, 0.08, n), 0.05, 1.0)
    for m, t_start, t_end, s in zip(
        merchant.tolist(), start.tolist(), (start + duration).tolist(), share.tolist(), strict=True
    ):
        lo = np.searchsorted(sorted_merchant, m, side="left")
        hi = np.searchsorted(sorted_merchant, m, side="right")
        a = lo + np.searchsorted(sorted_time[lo:hi], t_start, side="left")
        b = lo + np.searchsorted(sorted_time[lo:hi], t_end, side="left")
        rows = order[a:b]
        flipped = rows[rng.random(len(rows)) < s]
        scenario[flipped] = _COMPROMISED
        amt[flipped] = np.round(amt[flipped] * rng.lognormal(0.5, 0.3, len(flipped)), 2)
        exposed_card.append(legit.card[rows])
        exposed_time.append(legit.time[rows])
    legit = replace(legit, scenario=scenario, amt=amt)
    card = np.concatenate(exposed_card)
    last_visit = np.zeros(cfg.n_cards, dtype=np.int64)
    np.maximum.at(last_visit, card, np.concatenate(exposed_time))
    victims = np.unique(card)
    victims = victims[rng.random(len(victims)) < cfg.fraud.compromised_followup_prob]
    day = (last_visit[victims] + rng.integers(_DAY, 21 * _DAY, len(victims))) // _DAY * _DAY
    first = day + _start_hours(world, len(victims), 0.7, rng) * _HOUR + rng.integers(0, _HOUR, len(victims))
    sizes = np.clip(2 + rng.poisson(1.5, len(victims)), 2, 6)
    incident, t = _bursts(first, sizes, 3 * _MINUTE, 40 * _MINUTE, rng)
    followups = _online_rows(
        cards,
        merchants,
        victims[incident],
        t,
        (0.15, 0.4, 0.45),
        (150.0, 350.0, 400.0),
        0.6,
        _COMPROMISED,
        rng,
    )
    return legit, followups


def _geo_jumps(
    cfg: SimulatorConfig,
    world: _World,
    cards: _Cards,
    merchants: _Merchants,
    legit: _Tx,
    rng: np.random.Generator,
) -> _Tx:
    """(d) In-person purchases far from home shortly after a purchase at home (impossible travel)."""
    n = _incidents(cfg.fraud.geo_jump_per_card_year, cfg.n_cards * world.years, rng)
    at_home = np.flatnonzero(legit.trip < 0)
    if n == 0 or len(at_home) == 0:
        return _Tx.empty(_GEO)
    anchor = at_home[rng.integers(0, len(at_home), n)]
    card = legit.card[anchor]
    first = legit.time[anchor] + rng.integers(10 * _MINUTE, 150 * _MINUTE, n)
    destination = _far_places(cards.lat[card], cards.long[card], 1000.0, rng)
    place_lat, place_long, _ = _place_arrays()
    sizes = np.clip(2 + rng.poisson(1.5, n), 2, 7)
    incident, t = _bursts(first, sizes, 10 * _MINUTE, 90 * _MINUTE, rng)
    category = np.array([_CAT[c] for c in _GEO_CATEGORIES])[_draw(_cdf(np.array(_GEO_WEIGHTS)), rng, len(t))]
    merchant = np.empty(len(t), dtype=np.int64)
    amt = np.empty(len(t))
    for code in np.unique(category).tolist():
        rows = category == code
        merchant[rows] = _pick_merchants(merchants, code, int(rows.sum()), rng)
        amt[rows] = _amounts(code, int(rows.sum()), rng, rng.lognormal(1.3, 0.5, int(rows.sum())))
    lat, long = _offset(
        place_lat[destination][incident],
        place_long[destination][incident],
        rng.lognormal(np.log(5.0), 0.7, len(t)),
        rng.uniform(0, 2 * np.pi, len(t)),
    )
    return _Tx.make(card[incident], merchant, t, amt, _GEO, lat, long)


def _trans_nums(
    n: int, rng: np.random.Generator
) -> tuple[pa.Array, npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Random 32-hex-digit ids as an arrow string array, plus their two 64-bit halves (for sorting)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16)
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    text = np.empty((n, 32), dtype=np.uint8)
    text[:, 0::2] = digits[raw >> 4]
    text[:, 1::2] = digits[raw & 0x0F]
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    array = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text.tobytes()))
    halves = raw.view(">u8").astype(np.uint64)
    return array, halves[:, 0], halves[:, 1]


def _to_frame(
    tx: _Tx, cards: _Cards, merchants: _Merchants, rng: np.random.Generator
) -> tuple[pd.DataFrame, pd.Series]:
    trans_num, high, low = _trans_nums(len(tx), rng)
    order = np.lexsort((high, tx.time))
    same = (np.diff(tx.time[order]) == 0) & (np.diff(high[order]) == 0)
    if same.any():  # two ids sharing their first 64 bits in the same second: practically never
        order = np.lexsort((low, high, tx.time))
    tx = tx.take(order)
    card = pa.array(tx.card)
    columns = {
        "trans_date_trans_time": timestamp_strings(tx.time),
        "cc_num": pa.array(cards.text["cc_num"]).take(card),
        "merchant": pa.array(merchants.names).take(pa.array(tx.merchant)),
        "category": pa.array(list(CATEGORIES)).take(pa.array(merchants.category[tx.merchant])),
        "amt": pa.array(tx.amt),
        **{
            name: pa.array(cards.text[name]).take(card)
            for name in ("first", "last", "gender", "street", "city", "state")
        },
        "zip": pa.array(cards.zip[tx.card]),
        "lat": pa.array(cards.lat[tx.card]),
        "long": pa.array(cards.long[tx.card]),
        "city_pop": pa.array(cards.city_pop[tx.card]),
        "job": pa.array(cards.text["job"]).take(card),
        "dob": pa.array(cards.text["dob"]).take(card),
        "trans_num": trans_num.take(pa.array(order)),
        "unix_time": pa.array(tx.time - KAGGLE_UNIX_TIME_OFFSET),
        "merch_lat": pa.array(tx.lat),
        "merch_long": pa.array(tx.long),
        "is_fraud": pa.array((tx.scenario > 0).astype(np.int8)),
        "event_time": pa.array(tx.time),
    }
    frame = validate_frame(
        pa.table({name: columns[name] for name in CANONICAL_COLUMNS}).to_pandas(), source="simulator"
    )
    scenario = pd.Series(
        pd.Categorical.from_codes(tx.scenario.astype(np.int64), categories=pd.Index(SCENARIOS)),
        name="scenario",
    )
    return frame, scenario
