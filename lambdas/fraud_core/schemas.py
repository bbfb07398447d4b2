"""Data entering or leaving FraudSys: scoring requests/responses, stream events, the model manifest."""

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StringConstraints,
    Tag,
    model_validator,
)

from fraud_core import spec

Category = Literal[
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
]
if tuple(Category.__args__) != spec.CATEGORIES:  # type: ignore[attr-defined]
    raise RuntimeError("schemas.Category and spec.CATEGORIES disagree")

TransactionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
CardNumber = Annotated[str, StringConstraints(pattern=r"^[0-9]{8,19}$")]
CustomerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
# Names are free text but never control characters (the feature store uses \x1f as separator).
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
Amount = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
Latitude = Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
Longitude = Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
# Event times: 1971-01-01 .. 2200-01-01, far inside the feature math's integer range.
_MIN_EPOCH, _MAX_EPOCH = 31_536_000, 7_258_118_400


def _utc(value: datetime) -> datetime:
    """Naive datetimes are UTC; aware ones are converted to UTC."""
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        epoch = value.timestamp()
    except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00: before datetime.min in UTC
        epoch = -1.0
    if not _MIN_EPOCH <= epoch < _MAX_EPOCH:
        raise ValueError("must be between 1971-01-01 and 2200-01-01")
    return value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def epoch_seconds(value: datetime) -> int:
    """Whole epoch seconds (floor), the time unit of every feature."""
    return int(value.timestamp() // 1)


def to_cents(amount: float) -> int:
    return round(amount * 100)


def to_cents_array(amounts: "np.ndarray[Any, Any]") -> "np.ndarray[Any, Any]":
    """``to_cents`` of many amounts (int64): ``np.rint`` rounds the same double half to even, as
    ``round`` does."""
    return np.rint(np.asarray(amounts, dtype=np.float64) * 100.0).astype(np.int64)


def mask_card(card_id: str) -> str:
    """Never show a card number: keep the last four characters."""
    return f"****{card_id[-4:]}" if len(card_id) > 4 else "****"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    def __repr_args__(self) -> Any:
        """``repr``/``str`` (debug logs, tracebacks, Powertools' own debug lines) mask card numbers."""
        for name, value in super().__repr_args__():
            yield name, mask_card(value) if name == "cc_num" and isinstance(value, str) else value


class PredictRequest(_Strict):
    """A card transaction to score (``POST /predict``)."""

    # the document states the rule ``_one_card_id`` enforces: exactly one of the two is a string
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["cc_num"], "properties": {"cc_num": {"type": "string"}}},
                {"required": ["customer_id"], "properties": {"customer_id": {"type": "string"}}},
            ]
        }
    )

    transaction_id: TransactionId = Field(
        default_factory=lambda: uuid.uuid4().hex, description="Your id; generated when omitted."
    )
    cc_num: CardNumber | None = Field(default=None, description="Card number (or give customer_id).")
    customer_id: CustomerId | None = Field(default=None, description="Card/customer id (or cc_num).")
    merchant_name: Name
    category: Category
    amount_usd: Amount
    transaction_time: UtcDatetime = Field(description="ISO 8601; naive times are UTC.")
    lat: Latitude = Field(description="Cardholder home latitude.")
    long: Longitude = Field(description="Cardholder home longitude.")
    city_pop: int = Field(ge=0, le=100_000_000)
    merch_lat: Latitude
    merch_long: Longitude
    dob: date | None = Field(default=None, description="Cardholder date of birth, if known.")

    @model_validator(mode="after")
    def _one_card_id(self) -> Self:
        if (self.cc_num is None) == (self.customer_id is None):
            raise ValueError("give exactly one of cc_num or customer_id")
        return self

    @property
    def card_id(self) -> str:
        return self.cc_num if self.cc_num is not None else f"cust:{self.customer_id}"

    def to_event(self, received_at: datetime | None = None) -> "TransactionEvent":
        return TransactionEvent(
            received_at=received_at,
            trans_num=self.transaction_id,
            cc_num=self.card_id,
            merchant=self.merchant_name,
            category=self.category,
            amt=self.amount_usd,
            transaction_time=self.transaction_time,
            lat=self.lat,
            long=self.long,
            city_pop=self.city_pop,
            merch_lat=self.merch_lat,
            merch_long=self.merch_long,
            dob=self.dob,
        )


class Reason(BaseModel):
    feature: str
    value: float
    contribution: float = Field(description="SHAP contribution to the log-odds (XGBoost pred_contribs).")


class PredictResponse(BaseModel):
    transaction_id: str
    is_fraud: bool
    fraud_probability: float
    threshold: float
    model_version: str
    reasons: list[Reason]
    timestamp: datetime
    degraded: bool = Field(
        default=False, description="True when the feature store was unreachable: request-only features."
    )


class DependencyStatus(BaseModel):
    ok: bool
    detail: str = ""
    latency_ms: float | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded", "down"]
    model_version: str | None
    feature_spec_version: str
    dependencies: dict[str, DependencyStatus]


class TransactionEvent(_Strict):
    """A scored transaction on the stream (topic ``fraudsys.transactions``)."""

    kind: Literal["transaction"] = "transaction"
    trans_num: TransactionId
    cc_num: Annotated[str, StringConstraints(pattern=r"^(cust:)?[A-Za-z0-9_.:-]{1,64}$")]
    merchant: Name
    category: Category
    amt: Amount
    transaction_time: UtcDatetime
    lat: Latitude
    long: Longitude
    city_pop: int = Field(ge=0, le=100_000_000)
    merch_lat: Latitude
    merch_long: Longitude
    dob: date | None = None
    received_at: UtcDatetime | None = Field(
        default=None,
        description="When the system received the transaction (the scorer stamps it). The updater's "
        "time guard and the lake's arrival_time use it; without it, the record's broker timestamp.",
    )

    @property
    def event_time(self) -> int:
        return epoch_seconds(self.transaction_time)


class LabelEvent(_Strict):
    """A label (chargeback or its correction) on the stream (topic ``fraudsys.labels``).

    ``merchant`` and ``transaction_time`` are the labelled transaction's, resolved by whoever
    wrote the event (``POST /labels`` and ``fraudsys labels import`` look them up; replays of a
    data set copy them); both paths place the label with these fields. ``label_time`` is when the
    label reached the system. Rule for several labels of one transaction (both paths): from its
    arrival on, the latest label by arrival holds; same-second labels: fraud wins. Redelivery:
    events equal in (trans_num, label_time, is_fraud) are one label.
    """

    kind: Literal["label"] = "label"
    trans_num: TransactionId
    cc_num: Annotated[str, StringConstraints(pattern=r"^(cust:)?[A-Za-z0-9_.:-]{1,64}$")] | None = None
    merchant: Name
    transaction_time: UtcDatetime
    label_time: UtcDatetime = Field(description="When the label arrived (reached the system).")
    is_fraud: bool = True
    reported_at: UtcDatetime | None = Field(
        default=None, description="When the bank reported it, if given (informational)."
    )

    @property
    def event_time(self) -> int:
        return epoch_seconds(self.transaction_time)

    @property
    def arrival_time(self) -> int:
        return epoch_seconds(self.label_time)


#: The most labels one ``POST /labels`` may carry (larger files: ``fraudsys labels import``).
MAX_LABELS_PER_REQUEST = 500


def _not_in_the_future(value: datetime) -> datetime:
    """A report time may not lie beyond the allowed clock skew after its receipt."""
    if value > datetime.now(UTC) + timedelta(seconds=spec.MAX_CLOCK_SKEW):
        raise ValueError(f"must not be more than {spec.MAX_CLOCK_SKEW} s in the future")
    return value


class LabelRequest(_Strict):
    """One label for a scored transaction (``POST /labels``): a chargeback (``is_fraud: true``)
    or its reversal (``is_fraud: false``)."""

    transaction_id: TransactionId = Field(description="The transaction_id the transaction was scored with.")
    is_fraud: StrictBool = Field(description="true: fraud (chargeback); false: not fraud (a reversal).")
    reported_at: Annotated[UtcDatetime, AfterValidator(_not_in_the_future)] | None = Field(
        default=None, description="When the bank reported it (informational); not in the future."
    )


class LabelBatchRequest(_Strict):
    """Several labels in one ``POST /labels``."""

    labels: list[LabelRequest] = Field(min_length=1, max_length=MAX_LABELS_PER_REQUEST)


def _label_body_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict | LabelBatchRequest) and "labels" in _keys(value) else "label"


def _keys(value: Any) -> Any:
    return value if isinstance(value, dict) else type(value).model_fields


#: The body of ``POST /labels``: one label, or ``{"labels": [...]}`` (told apart by the ``labels``
#: key, so a 422 names the fields of the shape that was sent).
LabelsBody = Annotated[
    Annotated[LabelRequest, Tag("label")] | Annotated[LabelBatchRequest, Tag("batch")],
    Discriminator(_label_body_kind),
]


class LabelOutcome(BaseModel):
    transaction_id: str
    status: Literal["accepted", "unknown_transaction"] = Field(
        description="accepted: published to the labels stream; unknown_transaction: not in the "
        "transaction index (never scored and applied, or older than the label delay + 31 days): "
        "nothing published, no feature changes."
    )


class LabelsResponse(BaseModel):
    """The answer of ``POST /labels`` (202): one outcome per label, in the request's order."""

    label_time: datetime = Field(description="When the labels reached the system (their arrival).")
    accepted: int
    unknown: int
    results: list[LabelOutcome]


class ModelManifest(BaseModel):
    """Everything the scorer needs besides the booster file."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    version: str
    model_file: str = "model.ubj"
    feature_names: list[str]
    feature_spec_version: str
    threshold: float = Field(ge=0, le=1)
    label_delay_seconds: int = Field(ge=0)
    created_at: datetime
    metrics: dict[str, float] = Field(default_factory=dict)
    mlflow_run_id: str | None = None
    baseline: bool = Field(default=False, description="A request-only model (no rolling features).")
