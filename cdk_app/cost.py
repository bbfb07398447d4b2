"""Idle monthly cost of a synthesized stage: what its resources bill per hour (or month) while no
request arrives, from the templates, at us-east-1 on-demand list prices.

``python -m cdk_app.cost cdk.out`` prints the per-resource table of every stage in an output folder
(docs/infra.md carries it; tests/infra/test_cost.py checks the docs agree and that dev stays under
its budget). Usage-driven charges (requests, GB transferred or stored, Fargate training runs,
Lambda invocations, log ingestion) are not idle cost and are left out: see the notes in the docs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOURS_PER_MONTH = 730
#: us-east-1 on-demand list prices (USD) checked for this table; prices change and differ by region
PRICES = {
    "nat_gateway_hour": 0.045,
    "public_ipv4_hour": 0.005,
    "interface_endpoint_az_hour": 0.01,
    "kinesis_shard_hour": 0.015,
    "kinesis_on_demand_stream_hour": 0.04,
    "kms_key_month": 1.00,
    "secrets_manager_entry_month": 0.40,
    "waf_acl_month": 5.00,
    "waf_rule_month": 1.00,
    "alarm_metric_month": 0.10,
    "dashboard_month": 3.00,
    "msk_storage_gb_month": 0.10,
    "lambda_provisioned_gb_second": 0.0000041667,
    "mlflow_app_hour": 0.0,  # serverless MLflow: no server-hours
}
CACHE_NODE_HOUR = {
    "cache.t4g.micro": 0.016,
    "cache.t4g.small": 0.032,
    "cache.t4g.medium": 0.065,
    "cache.r7g.large": 0.219,
}
MSK_BROKER_HOUR = {"kafka.t3.small": 0.0456, "kafka.m7g.large": 0.204, "kafka.m5.large": 0.21}
MLFLOW_SERVER_HOUR = {"Small": 0.642, "Medium": 1.284, "Large": 2.568}


@dataclass(frozen=True)
class Line:
    stack: str
    resource: str  # logical id
    what: str
    monthly: float


def _hours(price: float) -> float:
    return price * HOURS_PER_MONTH


def _templates(assembly: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    manifest = json.loads((assembly / "manifest.json").read_text())
    for artifact in manifest["artifacts"].values():
        if artifact["type"] == "aws:cloudformation:stack":
            props = artifact["properties"]
            yield props["stackName"], json.loads((assembly / props["templateFile"]).read_text())


def idle_cost(assembly: Path) -> list[Line]:
    """One line per billed resource of a stage's cloud assembly (``assembly-FraudSys-<stage>``)."""
    lines: list[Line] = []
    functions: dict[str, int] = {}
    for stack, template in _templates(assembly):
        resources: dict[str, Any] = template.get("Resources", {})
        for lid, res in resources.items():
            if res["Type"] == "AWS::Lambda::Function":
                functions[lid] = int(res["Properties"].get("MemorySize", 128))
        for lid, res in resources.items():
            kind, props = res["Type"], res.get("Properties", {})

            def add(what: str, monthly: float, stack: str = stack, lid: str = lid) -> None:
                lines.append(Line(stack, lid, what, round(monthly, 2)))

            if kind == "AWS::EC2::NatGateway":
                add(
                    "NAT gateway + its public IPv4",
                    _hours(PRICES["nat_gateway_hour"] + PRICES["public_ipv4_hour"]),
                )
            elif kind == "AWS::EC2::VPCEndpoint" and props.get("VpcEndpointType") == "Interface":
                azs = len(props.get("SubnetIds", []))
                add(f"interface endpoint x {azs} AZ", _hours(PRICES["interface_endpoint_az_hour"]) * azs)
            elif kind == "AWS::ElastiCache::ReplicationGroup":
                node = props["CacheNodeType"]
                nodes = int(props.get("NumNodeGroups", 1)) * (1 + int(props.get("ReplicasPerNodeGroup", 0)))
                add(f"Redis {nodes} x {node}", _hours(CACHE_NODE_HOUR[node]) * nodes)
            elif kind == "AWS::Kinesis::Stream":
                if props.get("StreamModeDetails", {}).get("StreamMode") == "ON_DEMAND":
                    add("Kinesis on-demand stream", _hours(PRICES["kinesis_on_demand_stream_hour"]))
                else:
                    shards = int(props.get("ShardCount", 1))
                    add(
                        f"Kinesis {shards} provisioned shard(s)",
                        _hours(PRICES["kinesis_shard_hour"]) * shards,
                    )
            elif kind == "AWS::MSK::Cluster":
                brokers = int(props["NumberOfBrokerNodes"])
                info = props["BrokerNodeGroupInfo"]
                gib = int(info["StorageInfo"]["EBSStorageInfo"]["VolumeSize"])
                add(
                    f"MSK {brokers} x {info['InstanceType']} + {brokers} x {gib} GiB",
                    _hours(MSK_BROKER_HOUR[info["InstanceType"]]) * brokers
                    + PRICES["msk_storage_gb_month"] * gib * brokers,
                )
            elif kind == "AWS::SageMaker::MlflowTrackingServer":
                size = props.get("TrackingServerSize", "Small")
                add(f"MLflow tracking server ({size})", _hours(MLFLOW_SERVER_HOUR[size]))
            elif kind == "AWS::SageMaker::MlflowApp":
                add("MLflow App (serverless)", _hours(PRICES["mlflow_app_hour"]))
            elif kind == "AWS::KMS::Key":
                add("KMS customer-managed key", PRICES["kms_key_month"])
            elif kind == "AWS::SecretsManager::Secret":
                add("Secrets Manager secret", PRICES["secrets_manager_entry_month"])
            elif kind == "AWS::WAFv2::WebACL":
                rules = len(props.get("Rules", []))
                add(
                    f"WAF web ACL + {rules} rules", PRICES["waf_acl_month"] + PRICES["waf_rule_month"] * rules
                )
            elif kind == "AWS::CloudWatch::Alarm":
                metrics = len([m for m in props.get("Metrics", []) if "MetricStat" in m]) or 1
                add(f"CloudWatch alarm ({metrics} metric(s))", PRICES["alarm_metric_month"] * metrics)
            elif kind == "AWS::CloudWatch::Dashboard":
                add("CloudWatch dashboard", PRICES["dashboard_month"])
            elif kind == "AWS::Lambda::Alias" and props.get("ProvisionedConcurrencyConfig"):
                n = int(props["ProvisionedConcurrencyConfig"]["ProvisionedConcurrentExecutions"])
                memory = max(functions.values())  # the scorer's (the only alias)
                seconds = HOURS_PER_MONTH * 3600
                add(
                    f"Lambda provisioned concurrency {n} x {memory} MB",
                    n * memory / 1024 * seconds * PRICES["lambda_provisioned_gb_second"],
                )
    return lines


def summarize(lines: list[Line]) -> list[tuple[str, int, float]]:
    """(what, count, monthly) grouped by description, most expensive first."""
    groups: dict[str, list[Line]] = {}
    for line in lines:
        key = line.what if not line.what.startswith("CloudWatch alarm") else "CloudWatch alarms"
        groups.setdefault(key, []).append(line)
    out = [(what, len(items), round(sum(i.monthly for i in items), 2)) for what, items in groups.items()]
    return sorted(out, key=lambda g: (-g[2], g[0]))


def markdown(stage: str, lines: list[Line]) -> str:
    rows = [f"| `{stage}` | resource | count | per month |", "|---|---|---|---|"]
    rows += [f"| | {what} | {count} | ${monthly:,.2f} |" for what, count, monthly in summarize(lines)]
    rows.append(f"| | **total idle** | | **${sum(x.monthly for x in lines):,.2f}** |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "cdk.out")
    for assembly in sorted(out.glob("assembly-FraudSys-*")):
        stage = assembly.name.removeprefix("assembly-FraudSys-")
        print(markdown(stage, idle_cost(assembly)))
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
