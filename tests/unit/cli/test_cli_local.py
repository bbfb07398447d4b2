"""``fraudsys pipeline --local``: the running local stack's settings, with no credentials step."""

import os
from collections.abc import Iterator

import pytest

from fraudsys_cli.common import local_stack_overrides
from handlers import bootstrap
from handlers.settings import Settings
from local_stack.stack import StackConfig, handler_environment


@pytest.fixture
def newcomer_environment() -> Iterator[None]:
    """None of the stack's settings, no AWS credentials; the environment is put back after."""
    saved = dict(os.environ)
    for name in handler_environment(StackConfig()):
        os.environ.pop(name, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        bootstrap.reset()


@pytest.mark.usefixtures("newcomer_environment")
def test_local_sets_the_stacks_dummy_credentials_region_endpoint_and_targets() -> None:
    stack = StackConfig()

    overrides = local_stack_overrides()

    assert f"model_store_uri={stack.model_store_uri}" in overrides
    assert f"label_delay_seconds={stack.label_delay_seconds}" in overrides
    assert f"registry.tracking_uri=http://127.0.0.1:{stack.mlflow_port}" in overrides
    assert os.environ["AWS_ENDPOINT_URL_S3"] == f"http://127.0.0.1:{stack.s3_port}"
    assert os.environ["AWS_ACCESS_KEY_ID"]
    assert os.environ["AWS_SECRET_ACCESS_KEY"]
    assert os.environ["AWS_DEFAULT_REGION"]
    assert Settings.from_env().model_store_uri == stack.model_store_uri
