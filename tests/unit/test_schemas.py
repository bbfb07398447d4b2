"""The models where data enters and leaves: what they show of card numbers."""

from datetime import UTC, datetime

import pytest

from fraud_core.schemas import LabelEvent, PredictRequest, TransactionEvent

CARD = "4000056655665556"


def _request() -> PredictRequest:
    return PredictRequest(
        cc_num=CARD,
        merchant_name="fraud_Kirlin and Sons",
        category="home",
        amount_usd=12.5,
        transaction_time=datetime(2020, 6, 21, 12, 0, tzinfo=UTC),
        lat=40.0,
        long=-75.0,
        city_pop=1000,
        merch_lat=40.1,
        merch_long=-75.1,
    )


@pytest.mark.parametrize("kind", ["request", "transaction", "label"])
def test_repr_and_str_mask_the_card_number(kind: str) -> None:
    # given a model carrying a card number (what debug logs and tracebacks print)
    request = _request()
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
