"""The models where data enters and leaves: what they show of card numbers."""

import pytest
from pydantic import TypeAdapter, ValidationError

from fraud_core.schemas import (
    LabelBatchRequest,
    LabelEvent,
    LabelRequest,
    LabelsBody,
    PredictRequest,
    TransactionEvent,
)
from tests.support.events import a_request

CARD = "4000056655665556"


@pytest.mark.parametrize("kind", ["request", "transaction", "label"])
def test_repr_and_str_mask_the_card_number(kind: str) -> None:
    # given a model carrying a card number (what debug logs and tracebacks print)
    request = a_request(cc_num=CARD)
    models: dict[str, PredictRequest | TransactionEvent | LabelEvent] = {
        "request": request,
        "transaction": request.to_event(),
        "label": LabelEvent(
            trans_num="t1",
            cc_num=CARD,
            merchant="m",
            transaction_time=request.transaction_time,
            label_time=request.transaction_time,
            is_fraud=True,
        ),
    }
    model = models[kind]

    # then its repr and str show the last four digits only, and the data itself is intact
    for text in (repr(model), str(model)):
        assert CARD not in text
        assert "****5556" in text
    assert model.cc_num == CARD


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59Z"]
)
def test_times_past_the_datetime_range_after_conversion_to_utc_are_a_validation_error(when: str) -> None:
    # an offset that moves a time past datetime.min/max in UTC is a field error, not an OverflowError
    with pytest.raises(ValidationError, match="transaction_time"):
        a_request(transaction_time=when)
    with pytest.raises(ValidationError, match="reported_at"):
        LabelRequest.model_validate({"transaction_id": "t1", "is_fraud": True, "reported_at": when})


def test_a_label_body_is_one_label_or_a_batch() -> None:
    body = TypeAdapter(LabelsBody)
    assert isinstance(body.validate_python({"transaction_id": "t1", "is_fraud": False}), LabelRequest)
    batch = body.validate_python({"labels": [{"transaction_id": "t1", "is_fraud": True}]})
    assert isinstance(batch, LabelBatchRequest)
    with pytest.raises(ValidationError, match="is_fraud"):
        body.validate_json('{"transaction_id": "t1", "is_fraud": "true"}')  # JSON booleans only
