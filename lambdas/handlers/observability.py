"""Powertools singletons shared by the handlers (created once per container)."""

from aws_lambda_powertools import Logger, Metrics, Tracer

from fraud_core.schemas import mask_card

__all__ = ["logger", "mask_card", "metrics", "tracer"]

logger = Logger(service="fraudsys")
metrics = Metrics(namespace="FraudSys", service="fraudsys")
tracer = Tracer(service="fraudsys")
