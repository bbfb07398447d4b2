"""Idle cost per stage (cdk_app.cost, from the synthesized templates): dev stays under its budget and
docs/infra.md carries the tables the templates give."""

from __future__ import annotations

from pathlib import Path

from cdk_app.cost import idle_cost, markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "infra.md"
DEV_BUDGET_PER_MONTH = 150.0


def test_dev_idles_under_its_budget(real_assemblies: dict[str, Path]) -> None:
    lines = idle_cost(real_assemblies["dev"])
    total = sum(line.monthly for line in lines)
    assert total < DEV_BUDGET_PER_MONTH, markdown("dev", lines)
    whats = {line.what for line in lines}
    # the choices that keep it there: no MLflow server-hours, no interface endpoints, one shard
    assert "MLflow App (serverless)" in whats
    assert not any(w.startswith(("MLflow tracking server", "interface endpoint")) for w in whats)
    assert "Kinesis 1 provisioned shard(s)" in whats


def test_the_model_prices_what_prod_runs(real_assemblies: dict[str, Path]) -> None:
    lines = idle_cost(real_assemblies["prod"])
    whats = {line.what for line in lines}
    assert "MLflow tracking server (Medium)" in whats
    assert "MSK 4 x kafka.m7g.large + 4 x 500 GiB" in whats
    assert "Redis 6 x cache.r7g.large" in whats
    assert "Lambda provisioned concurrency 20 x 2048 MB" in whats
    assert sum(line.monthly for line in lines) > 1000


def test_docs_carry_the_tables_of_the_templates(real_assemblies: dict[str, Path]) -> None:
    docs = DOCS.read_text()
    for stage in ("dev", "prod"):
        table = markdown(stage, idle_cost(real_assemblies[stage]))
        assert table in docs, f"docs/infra.md: refresh the {stage} table (python -m cdk_app.cost)\n{table}"
