#!/usr/bin/env python3
"""FraudSys CDK app: the stages of cdk.json's ``context.fraudsys.stages`` (see docs/infra.md).

``npx cdk synth`` or ``CDK_OUTDIR=cdk.out python app.py``; cdk.json's context is read here too, so
both see the same feature flags and stages (CLI ``-c`` values still win).
"""

import aws_cdk as cdk

from cdk_app.config import read_cdk_json_context
from cdk_app.stage import add_stages

app = cdk.App(context=read_cdk_json_context(), analytics_reporting=False)
add_stages(app)
app.synth()
