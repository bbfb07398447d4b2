"""Time you can trust: no event may be dated after the time the system received it.

Features are computed as of event times, and a key's retention point follows its newest event,
so one event dated in the future would trim every real event of its card or merchant. Both
edges refuse such events with the same rule (``docs/features.md``): the API answers 422, the
updater dead-letters the record.

* A transaction is refused when its ``transaction_time`` is more than ``skew`` seconds after its
  receipt: ``received_at`` (stamped by the scorer) or the broker's record timestamp, whichever
  is earlier.
* A label is refused when its arrival (``label_time``) is more than ``skew`` after its receipt,
  or when its transaction is dated more than ``skew`` after the label arrived.
"""

from fraud_core.schemas import LabelEvent, TransactionEvent, epoch_seconds


def receipt(event: TransactionEvent | LabelEvent, record_time: int | None) -> int | None:
    """When the system received ``event``: the earlier of its own stamp and the broker's."""
    own = (
        epoch_seconds(event.received_at)
        if isinstance(event, TransactionEvent) and event.received_at
        else None
    )
    known = [t for t in (own, record_time) if t is not None]
    return min(known) if known else None


def refusal(event: TransactionEvent | LabelEvent, received: int | None, skew: int) -> str | None:
    """Why ``event`` must not be applied, or None. ``received``: ``receipt(...)``, None if unknown."""
    if isinstance(event, LabelEvent):
        if received is not None and event.arrival_time > received + skew:
            return (
                f"label_time: {event.arrival_time - received} s after the label was received (skew {skew} s)"
            )
        if event.event_time > event.arrival_time + skew:
            return f"transaction_time: {event.event_time - event.arrival_time} s after its label arrived"
        return None
    if received is not None and event.event_time > received + skew:
        return f"transaction_time: {event.event_time - received} s after it was received (skew {skew} s)"
    return None


def request_refusal(t: int, now: int, skew: int, max_age: int | None) -> str | None:
    """Why a scoring request dated ``t`` and received at ``now`` is refused, or None."""
    if t > now + skew:
        return f"must not be more than {skew} s after the time the request was received"
    if max_age is not None and t < now - max_age:
        return f"must not be more than {max_age} s before the time the request was received"
    return None
