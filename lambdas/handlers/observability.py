"""Powertools singletons shared by the handlers (created once per container)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="fraudsys")
metrics = Metrics(namespace="FraudSys", service="fraudsys")
tracer = Tracer(service="fraudsys")


def mask_card(card_id: str) -> str:
    """Never log a card number: keep the last four characters."""
    return f"****{card_id[-4:]}" if len(card_id) > 4 else "****"
