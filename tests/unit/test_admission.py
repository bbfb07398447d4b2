"""The local API's admission control (``local_stack.api.Admission``): pure bookkeeping, no server."""

import time

import pytest

from local_stack.api import ADMIT_WITHIN, FIRST_ESTIMATE_MS, Admission, Ticket
from local_stack.events import LocalContext


def test_an_idle_handler_admits_any_request_even_one_estimated_past_its_deadline() -> None:
    admission = Admission(deadline_ms=10, max_queue=4)
    admission.estimates_ms["/predict"] = 50.0  # a slow spell: longer than the deadline

    ticket = admission.admit("/predict", time.monotonic())

    assert isinstance(ticket, Ticket)  # else a slow spell would refuse everything for ever
    assert admission.outstanding == 1


def test_a_request_whose_deadline_the_queued_work_leaves_out_of_reach_is_refused() -> None:
    admission = Admission(deadline_ms=100 / ADMIT_WITHIN, max_queue=100)  # admitted if done within 100 ms
    admission.estimates_ms["/predict"] = 15.0
    admission.drain_ms = 30.0
    now = time.monotonic()
    admitted = [admission.admit("/predict", now) for _ in range(3)]  # 90 ms of work ahead of a 4th

    refused = admission.admit("/predict", now)

    assert all(isinstance(t, Ticket) for t in admitted)
    assert isinstance(refused, str)
    assert "deadline" in refused
    assert admission.outstanding == 3


def test_a_full_queue_refuses_whatever_the_estimate() -> None:
    admission = Admission(deadline_ms=10_000, max_queue=2)
    now = time.monotonic()
    assert isinstance(admission.admit("/predict", now), Ticket)
    assert isinstance(admission.admit("/health", now), Ticket)

    refused = admission.admit("/predict", now)

    assert isinstance(refused, str)
    assert "2 requests queued" in refused


def test_finished_requests_free_their_place_and_teach_the_route_its_time() -> None:
    admission = Admission(deadline_ms=250, max_queue=1)
    ticket = admission.admit("/predict", time.monotonic())
    assert isinstance(ticket, Ticket)
    assert ticket.estimate_ms == FIRST_ESTIMATE_MS

    admission.finished(ticket, handler_ms=25.0)

    assert admission.outstanding == 0
    assert admission.estimates_ms["/predict"] == 25.0  # the first measure replaces the guess
    again = admission.admit("/predict", time.monotonic())
    assert isinstance(again, Ticket)
    assert again.estimate_ms == 25.0
    admission.finished(again, handler_ms=None)  # dropped before the handler: teaches nothing
    assert admission.estimates_ms["/predict"] == 25.0


def test_the_pace_is_learnt_from_requests_that_waited_for_the_one_before() -> None:
    admission = Admission(deadline_ms=1000, max_queue=10)
    now = time.monotonic()
    first, second, late = (admission.admit("/predict", now) for _ in range(3))
    assert isinstance(first, Ticket)
    assert isinstance(second, Ticket)
    assert isinstance(late, Ticket)
    first.started, second.started = now + 1.0, now + 1.040  # the second waited: 40 ms start to start
    admission.finished(first, 30.0)
    admission.finished(second, 30.0)
    assert admission.drain_ms == pytest.approx(FIRST_ESTIMATE_MS + 0.1 * (40.0 - FIRST_ESTIMATE_MS))

    # a request that arrived after the one before had started did not wait for all of it
    late.arrived = late.started = now + 1.5
    admission.finished(late, 30.0)
    assert admission.drain_ms == pytest.approx(FIRST_ESTIMATE_MS + 0.1 * (40.0 - FIRST_ESTIMATE_MS))


def test_the_handler_sees_no_time_left_once_the_deadline_passed_or_the_client_left() -> None:
    ticket = Ticket("/predict", time.monotonic(), time.monotonic() + 60, 1.0)
    context = LocalContext("t", deadline=ticket.deadline, gone=ticket.gone.is_set)
    assert 50_000 < context.get_remaining_time_in_millis() <= 60_000
    assert not ticket.expired()

    ticket.gone.set()

    assert context.get_remaining_time_in_millis() == 0
    assert ticket.expired()
    past = LocalContext("t", deadline=time.monotonic() - 1)
    assert past.get_remaining_time_in_millis() == 0
    assert LocalContext("t").get_remaining_time_in_millis() == 60_000  # no deadline: a Lambda's minute
