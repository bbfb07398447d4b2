"""The models where data enters and leaves: what they show of card numbers."""

import pytest

from fraud_core.schemas import LabelEvent, PredictRequest, TransactionEvent
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
