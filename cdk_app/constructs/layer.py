"""The Lambda layers as CDK assets, built locally by ``layers/build.py`` (no Docker): the slim
XGBoost layer (both handlers) and the arrow layer (the updater's lake writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk_app.config import REPO_ROOT, Architecture
from layers import build

# Only used if local bundling declined, which it never does (it raises on failure instead).
FALLBACK_IMAGE = "public.ecr.aws/sam/build-python3.13"


@jsii.implements(cdk.ILocalBundling)
class LocalLayerBundling:
    """Build (or reuse the cached ``build/layers/<kind>/<arch>``) and link it into the asset folder."""

    def __init__(self, arch: Architecture, kind: build.LayerKind = "xgboost") -> None:
        self.arch = arch
        self.kind = kind

    def try_bundle(self, output_dir: str, *args: Any, **kwargs: Any) -> bool:
        built = build.build_layer(self.arch, kind=self.kind)
        build.copy_tree(built.python_dir, Path(output_dir) / "python")
        return True


def lambda_architecture(arch: Architecture) -> lambda_.Architecture:
    return lambda_.Architecture.ARM_64 if arch == "arm64" else lambda_.Architecture.X86_64


def layer_code(arch: Architecture, kind: build.LayerKind = "xgboost") -> lambda_.Code:
    return lambda_.Code.from_asset(
        str(REPO_ROOT / "layers"),
        exclude=["**/__pycache__", "**/*.pyc"],
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry(f"{FALLBACK_IMAGE}:latest-{arch}"),
            command=[
                "bash",
                "-c",
                f"pip install uv && python build.py --arch {arch} --kind {kind} --out-root /tmp/layer "
                f"&& cp -r /tmp/layer/{arch}/python /asset-output/",
            ],
            # Part of the asset hash: layers of another architecture or kind never share a staged asset.
            environment={"FRAUDSYS_LAYER_ARCH": arch, "FRAUDSYS_LAYER_KIND": kind},
            local=LocalLayerBundling(arch, kind),
        ),
    )


class SlimXGBoostLayer(Construct):
    """xgboost-cpu, numpy, pydantic, Powertools, redis/hiredis, confluent-kafka (librdkafka) and the
    MSK IAM signer for python3.13."""

    layer: lambda_.LayerVersion

    def __init__(self, scope: Construct, construct_id: str, *, arch: Architecture) -> None:
        super().__init__(scope, construct_id)
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            code=layer_code(arch),
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_13],
            compatible_architectures=[lambda_architecture(arch)],
            description="FraudSys slim XGBoost layer (layers/requirements.txt)",
        )


class ArrowLayer(Construct):
    """pyarrow (pruned) for the updater's lake writer; numpy comes from the XGBoost layer."""

    layer: lambda_.LayerVersion

    def __init__(self, scope: Construct, construct_id: str, *, arch: Architecture) -> None:
        super().__init__(scope, construct_id)
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            code=layer_code(arch, "arrow"),
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_13],
            compatible_architectures=[lambda_architecture(arch)],
            description="FraudSys arrow layer for the event lake (layers/requirements-arrow.txt)",
        )
