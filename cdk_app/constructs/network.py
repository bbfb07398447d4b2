"""VPC, subnets, endpoints and the security groups of every component (rules wired here)."""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from constructs import Construct

from cdk_app.config import StageConfig
from cdk_app.constructs.common import log_group

KAFKA_IAM_PORT = 9098  # MSK brokers, SASL/IAM over TLS


class Network(Construct):
    """Private subnets for the Lambdas, Redis, MSK and training; NAT for the AWS APIs without endpoints."""

    vpc: ec2.Vpc
    app_subnets: ec2.SubnetSelection
    scorer_sg: ec2.SecurityGroup
    updater_sg: ec2.SecurityGroup
    archiver_sg: ec2.SecurityGroup
    relay_sg: ec2.SecurityGroup
    training_sg: ec2.SecurityGroup
    redis_sg: ec2.SecurityGroup
    msk_sg: ec2.SecurityGroup | None
    endpoint_sg: ec2.SecurityGroup

    def __init__(self, scope: Construct, construct_id: str, *, config: StageConfig) -> None:
        super().__init__(scope, construct_id)
        vpc_cfg = config.vpc
        flow_logs = log_group(self, "FlowLogs", config, vpc_cfg.flow_log_retention_days)
        zones = (
            {"availability_zones": list(vpc_cfg.availability_zones)}
            if vpc_cfg.availability_zones
            else {"max_azs": vpc_cfg.max_azs}
        )
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(vpc_cfg.cidr),
            nat_gateways=vpc_cfg.nat_gateways,
            restrict_default_security_group=True,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(
                    name="app", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                ),
            ],
            flow_logs={
                "all": ec2.FlowLogOptions(
                    destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                    traffic_type=ec2.FlowLogTrafficType.ALL,
                )
            },
            **zones,
        )
        self.app_subnets = ec2.SubnetSelection(subnet_group_name="app")

        def group(name: str, description: str, *, all_outbound: bool = False) -> ec2.SecurityGroup:
            return ec2.SecurityGroup(
                self, name, vpc=self.vpc, description=description, allow_all_outbound=all_outbound
            )

        self.scorer_sg = group("ScorerSg", "FraudSys scorer Lambda")
        self.updater_sg = group("UpdaterSg", "FraudSys feature updater Lambda")
        self.archiver_sg = group("ArchiverSg", "FraudSys archiver Lambda (the event lake)")
        # the publish outbox's relay: the stream only (no Redis), so not the scorer's group
        self.relay_sg = group("RelaySg", "FraudSys publish outbox relay Lambda")
        self.training_sg = group("TrainingSg", "FraudSys training task (Fargate)")
        self.redis_sg = group("RedisSg", "FraudSys Redis feature store")
        self.endpoint_sg = group("EndpointSg", "FraudSys interface VPC endpoints")
        https = ec2.Port.tcp(443)
        redis_port = ec2.Port.tcp(config.redis.port)
        clients = (self.scorer_sg, self.updater_sg, self.archiver_sg, self.relay_sg, self.training_sg)
        for client in clients:
            # AWS APIs: through the interface endpoints, the S3 gateway endpoint, or the NAT gateway.
            client.add_egress_rule(ec2.Peer.any_ipv4(), https, "AWS APIs over HTTPS")
            self.endpoint_sg.add_ingress_rule(client, https, "HTTPS to the interface endpoints")
        for client in (self.scorer_sg, self.updater_sg):
            client.add_egress_rule(self.redis_sg, redis_port, "Redis (TLS)")
            self.redis_sg.add_ingress_rule(client, redis_port, "Redis from the Lambdas only")

        self.msk_sg = None
        if config.stream_kind == "msk":
            kafka = ec2.Port.tcp(KAFKA_IAM_PORT)
            # The event source mapping's pollers run in the cluster's subnets with this group:
            # they need the brokers (self reference) and Lambda/STS through the NAT (all outbound).
            self.msk_sg = group("MskSg", "FraudSys MSK brokers and event pollers", all_outbound=True)
            self.msk_sg.add_ingress_rule(self.msk_sg, kafka, "Lambda event pollers to the brokers")
            self.msk_sg.add_ingress_rule(self.scorer_sg, kafka, "Scorer publishes transactions")
            self.scorer_sg.add_egress_rule(self.msk_sg, kafka, "Kafka SASL/IAM")
            self.msk_sg.add_ingress_rule(self.relay_sg, kafka, "Outbox relay publishes transactions")
            self.relay_sg.add_egress_rule(self.msk_sg, kafka, "Kafka SASL/IAM")

        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        services = {
            "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
            "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
            # the scorer's sends to the publish outbox (on a failed publish): not through the NAT
            "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
        }
        if config.stream_kind == "kinesis":
            services["Kinesis"] = ec2.InterfaceVpcEndpointAwsService.KINESIS_STREAMS
        if not config.vpc.interface_endpoints:
            services = {}  # those APIs are reached through the NAT gateway (a cost choice: dev)
        for name, service in services.items():
            self.vpc.add_interface_endpoint(
                name,
                service=service,
                subnets=self.app_subnets,
                security_groups=[self.endpoint_sg],
                private_dns_enabled=True,
                open=False,
            )

    @property
    def private_subnet_ids(self) -> list[str]:
        return self.vpc.select_subnets(subnet_group_name="app").subnet_ids
