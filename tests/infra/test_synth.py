"""Whole-app checks: cdk-nag AwsSolutions, cfn-lint, and real synths (plain python and the npm CLI)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks

from cdk_app.stage import FraudSysStage

from .conftest import KINESIS_CONFIG, MSK_CONFIG, REPO_ROOT, app_context

# W3005 ("DependsOn already enforced by GetAtt"): CDK adds an explicit DependsOn from a Lambda to its
# role's default policy next to the GetAtt of the role; harmless, generated, and not ours to change.
CFN_LINT_IGNORED = ["W3005"]
CFN_LINT = str(Path(sys.executable).with_name("cfn-lint"))
SYNTH_ENV = {
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
    "CDK_DISABLE_CLI_TELEMETRY": "true",
}


def _violations(outdir: Path) -> list[str]:
    report = outdir / "validation-report.json"
    if not report.exists():
        return []
    data = json.loads(report.read_text())
    return [
        f"{v['ruleName']} at {c['constructPath']}"
        for plugin in data.get("pluginReports", [])
        for v in plugin.get("violations", [])
        for c in v["violatingConstructs"]
    ]


def test_cdk_nag_aws_solutions_has_no_unacknowledged_findings(tmp_path: Path) -> None:
    # given both stream kinds in one app with the AwsSolutions pack as a validation plugin
    app = cdk.App(context=app_context(), outdir=str(tmp_path), analytics_reporting=False)
    FraudSysStage(app, "FraudSys-tmsk", config=MSK_CONFIG)
    FraudSysStage(app, "FraudSys-tkin", config=KINESIS_CONFIG)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))

    # when synthesized (a finding that is not acknowledged fails the synth)
    try:
        app.synth()
    except RuntimeError as exc:  # jsii surfaces the ValidationFailed error as RuntimeError
        pytest.fail(f"cdk-nag findings:\n{exc}\n" + "\n".join(_violations(tmp_path)))

    # then the report lists nothing
    assert _violations(tmp_path) == []


def test_cdk_nag_gate_really_fails_on_a_finding(tmp_path: Path) -> None:
    # given an app with an unencrypted, unlogged bucket and the same plugin
    app = cdk.App(context=app_context(), outdir=str(tmp_path), analytics_reporting=False)
    stack = cdk.Stack(app, "Bad")
    s3.CfnBucket(stack, "Plain")
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))

    # then synth fails and names the rule
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    assert any(v.startswith("AwsSolutions-S1") for v in _violations(tmp_path))


def test_cfn_lint_finds_no_errors_or_warnings(stages: object, cdk_outdir: Path) -> None:
    # given the synthesized templates of the three stages (the session fixture synthesized them):
    # five stacks each for MSK and Kinesis, three for the LocalStack stage
    templates = sorted(str(p) for p in cdk_outdir.glob("assembly-*/*.template.json"))
    assert len(templates) == 13

    # when cfn-lint checks them
    result = subprocess.run(
        [CFN_LINT, "--format", "parseable", "--ignore-checks", *CFN_LINT_IGNORED, "--", *templates],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    # then it reports nothing (exit 0; informational findings are not enabled)
    assert result.returncode == 0, result.stdout + result.stderr


def _run_synth(
    command: list[str], outdir: Path, extra_env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **SYNTH_ENV, **extra_env}
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.slow
def test_plain_python_synth_bundles_the_layer_locally(tmp_path: Path) -> None:
    # given only Python (no node CLI, no Docker), synthesizing the dev stage of cdk.json
    result = _run_synth(
        [sys.executable, "app.py"],
        tmp_path,
        {"CDK_OUTDIR": str(tmp_path), "CDK_CONTEXT_JSON": json.dumps({"fraudsys:stages": "dev"})},
    )

    # then synth (with cdk-nag) succeeds and the layer asset holds the built site-packages
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "assembly-FraudSys-dev").is_dir()
    layer_assets = [p for p in tmp_path.glob("asset.*") if (p / "python" / "xgboost").is_dir()]
    assert len(layer_assets) == 1
    assert (layer_assets[0] / "python" / "scipy" / "sparse" / "__init__.py").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    not (REPO_ROOT / "node_modules" / ".bin" / "cdk").exists() or shutil.which("npx") is None,
    reason="the aws-cdk CLI is not installed: run `npm ci` at the repo root",
)
def test_npx_cdk_synth_of_every_stage(tmp_path: Path) -> None:
    # when the pinned CLI synthesizes the app as cdk.json says (all stages)
    result = _run_synth(
        ["npx", "--no-install", "cdk", "synth", "--quiet", "--output", str(tmp_path)], tmp_path, {}
    )

    # then it succeeds for dev and prod (five stacks) and localstack (no network, no training)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    for stage in ("dev", "prod"):
        assert len(list((tmp_path / f"assembly-FraudSys-{stage}").glob("*.template.json"))) == 5
    assert len(list((tmp_path / "assembly-FraudSys-localstack").glob("*.template.json"))) == 3
