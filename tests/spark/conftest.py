"""One local SparkSession for the whole test run (starting its JVM costs 10-40 s on this machine).

Two cores and 4 shuffle partitions: the test data are small, more partitions only add tasks.
Code under test that asks for a session (``training.spark_features.spark_session``) gets this
one, the active session, and does not stop it. Its Python workers run the interpreter of the
test run (the project's venv, where pandas, pyarrow and the project are), whatever
``PYSPARK_PYTHON`` the environment had: another interpreter's workers fail to import them.
"""

import os
import sys
from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from training.spark_features import local_session


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    session = local_session(cores=2, driver_memory="2g", shuffle_partitions=4)
    yield session
    session.stop()
