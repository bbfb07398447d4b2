"""Powertools singletons shared by the handlers (created once per container).

The service name and namespace come from ``POWERTOOLS_SERVICE_NAME`` / ``POWERTOOLS_METRICS_NAMESPACE``
(set by the CDK from the stage's ``service_name``, the dimension its alarms filter on)."""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer

from fraud_core.schemas import mask_card

__all__ = ["SERVICE_NAME", "logger", "mask_card", "metrics", "tracer"]

SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME") or "fraudsys"
METRICS_NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "FraudSys"

logger = Logger(service=SERVICE_NAME)
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)
tracer = Tracer(service=SERVICE_NAME)
