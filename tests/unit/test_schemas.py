"""The models where data enters and leaves: what they show of card numbers."""

from typing import Any

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


@pytest.mark.parametrize(
    "ids",
    [
        {"cc_num": "4111111111111111"},
        {"customer_id": "cust-1"},
        {"cc_num": "4111111111111111", "customer_id": "cust-1"},
        {},
        {"cc_num": None, "customer_id": "cust-1"},
        {"cc_num": "4111111111111111", "customer_id": None},
        {"cc_num": None, "customer_id": None},
    ],
    ids=["cc", "customer", "both", "neither", "cc-null", "customer-null", "both-null"],
)
def test_the_json_schema_states_the_one_card_id_rule_as_the_model_enforces_it(ids: dict[str, Any]) -> None:
    import jsonschema  # type: ignore[import-untyped]  # schemathesis depends on it

    body = a_request().model_dump(mode="json", exclude={"cc_num", "customer_id"}) | ids
    try:
        PredictRequest.model_validate(body)
        model_ok = True
    except ValidationError:
        model_ok = False
    schema_ok = jsonschema.Draft202012Validator(PredictRequest.model_json_schema()).is_valid(body)
    assert schema_ok == model_ok
    assert model_ok == (len([v for v in ids.values() if v is not None]) == 1)
