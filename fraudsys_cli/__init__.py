"""``fraudsys``: the command line, on top of everything it drives.

One module per command group: ``data`` (simulate, ingest), ``model`` (features, pipeline, train,
retrain, promote, evaluate, score, backtest), ``local`` (the local stack and the demo), ``labels``
(bulk chargeback files), ``store`` (backfill). Imports point one way (docs/architecture.md,
checked by ``tests/unit/test_layers.py``): ``fraudsys_cli`` -> ``local_stack`` -> ``training`` |
``cdk_app`` -> ``handlers`` -> ``fraud_adapters`` -> ``fraud_core``. Commands import what they drive
inside their bodies, so ``fraudsys --help`` starts fast.
"""

import logging

from fraudsys_cli import data, labels, local, model, store
from fraudsys_cli.common import app

__all__ = ["app", "data", "labels", "local", "main", "model", "store"]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    app()
