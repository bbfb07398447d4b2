"""MLflow's client is quiet on local tracking URIs (issue 15 B4)."""

import logging

import pytest
from mlflow.tracking.request_header.registry import resolve_request_headers

from training.registry import quiet_mlflow_client


def test_no_request_header_warning_on_a_local_tracking_uri(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5050")
    mlflow.set_tracking_uri("http://127.0.0.1:5050")
    quiet_mlflow_client("http://127.0.0.1:5050")
    with caplog.at_level(logging.WARNING, logger="mlflow"):
        resolve_request_headers()  # type: ignore[no-untyped-call]
    assert [r.getMessage() for r in caplog.records if "request headers" in r.getMessage()] == []


def test_the_pip_version_warning_is_dropped_and_others_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    quiet_mlflow_client("sqlite:///unused.db")
    quiet_mlflow_client("sqlite:///unused.db")  # once is enough; twice adds nothing
    environment_log = logging.getLogger("mlflow.utils.environment")
    assert len(environment_log.filters) == 1
    with caplog.at_level(logging.WARNING, logger="mlflow.utils.environment"):
        environment_log.warning("Failed to resolve installed pip version. ``pip`` will be added")
        environment_log.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
