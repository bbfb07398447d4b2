"""Pipeline configuration: YAML + environment of the deployed training task + overrides."""

from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from training.config import CsvSource, LakeSource, ParquetSource, SimulatedSource, load_config
from training.pipeline import materialize

DEFAULT = Path("training/configs/default.yaml")


def test_default_config_is_the_simulated_demo() -> None:
    cfg = load_config(DEFAULT)
    assert isinstance(cfg.source, SimulatedSource)
    assert cfg.label_delay_seconds == 7 * 86400
    assert cfg.store_uri == "data/model_store"


def test_task_environment_and_overrides() -> None:
    env = {
        "MODEL_STORE_URI": "s3://models-bucket/models",
        "LABEL_DELAY_SECONDS": "86400",
        "MODEL_NAME": "fraud-prod",
        "RAW_DATA_URI": "s3://raw-bucket/kaggle/parquet",
    }
    cfg = load_config(DEFAULT, env=env, overrides={"tuning": {"n_trials": 2}})
    assert cfg.store_uri == "s3://models-bucket/models"
    assert cfg.label_delay_seconds == 86400
    assert cfg.registry.model_name == "fraud-prod"
    assert isinstance(cfg.source, ParquetSource)
    assert cfg.tuning.n_trials == 2
    csv = load_config(DEFAULT, env={"RAW_DATA_URI": "/data/fraudTrain.csv"})
    assert isinstance(csv.source, CsvSource)


def test_the_scheduled_retraining_reads_the_lake() -> None:
    # given the task's environment as the schedule starts it (TRAINING_SOURCE=lake)
    env = {"RAW_DATA_URI": "s3://raw/kaggle.csv", "LAKE_URI": "s3://lake/archive", "TRAINING_SOURCE": "lake"}

    # then it trains on the archived events, not the raw data set; without a lake it says why
    cfg = load_config(DEFAULT, env=env)
    assert isinstance(cfg.source, LakeSource)
    assert cfg.source.uri == "s3://lake/archive"
    with pytest.raises(ValueError, match="needs LAKE_URI"):
        load_config(DEFAULT, env={"TRAINING_SOURCE": "lake"})
    assert isinstance(load_config(DEFAULT, env={**env, "TRAINING_SOURCE": "raw"}).source, CsvSource)


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_trails"):
        load_config(DEFAULT, overrides={"tuning": {"n_trails": 2}})


@mock_aws
def test_s3_sources_are_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="raw")
    s3.put_object(Bucket="raw", Key="parquet/month=2019-01/part-00000.parquet", Body=b"a")
    s3.put_object(Bucket="raw", Key="parquet/month=2019-02/part-00000.parquet", Body=b"b")
    local = materialize("s3://raw/parquet", tmp_path)
    assert (local / "month=2019-01" / "part-00000.parquet").read_bytes() == b"a"
    assert (local / "month=2019-02" / "part-00000.parquet").read_bytes() == b"b"
    assert materialize("/already/local", tmp_path) == Path("/already/local")
    with pytest.raises(FileNotFoundError):
        materialize("s3://raw/nothing-here", tmp_path)


def test_the_container_work_folder_comes_from_the_environment() -> None:
    # training/Dockerfile: /app is read-only for the job's user, FRAUDSYS_DATA_DIR is its home's
    cfg = load_config(DEFAULT, env={"FRAUDSYS_DATA_DIR": "/home/fraudsys/work"})
    assert str(cfg.data_dir) == "/home/fraudsys/work"
    assert cfg.store_uri == "/home/fraudsys/work/model_store"
