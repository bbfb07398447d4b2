"""cdk-nag (v3) acknowledgements: every one names the rule finding and says why it is acceptable."""

from __future__ import annotations

import aws_cdk as cdk
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge one finding (``AwsSolutions-IAM5[Resource::*]``) on ``scope`` and its children."""
    if len(reason) < 20:
        raise ValueError(f"a cdk-nag acknowledgement needs a real reason: {rule}: {reason!r}")
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule, reason=reason))
