"""Tuning speed: trials per minute of ``training.train.tune`` with and without pruning.

``uv run python -m training.tuning_bench --pruner median`` (docs/benchmarks.md): simulates the
preset, builds the point-in-time features and the default splits once, then times ``tune`` on
the training split and prints one JSON line (wall time, trials per minute, pruned trials, the
best cross-validated AUCPR, the load average).
"""

import argparse
import json
import os
import time
from collections.abc import Sequence

from training.config import SplitConfig, TuningConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", choices=("demo", "kaggle"), default="demo")
    parser.add_argument("--n-days", type=int, default=None, help="simulate this many days of the preset")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    parser.add_argument("--nthread", type=int, default=2)
    args = parser.parse_args(argv)

    import optuna

    from fraud_core import spec
    from training.data.simulator import SimulatorConfig, kaggle_scale, simulate
    from training.dataset import build_features
    from training.train import time_splits, tune

    base = kaggle_scale() if args.scale == "kaggle" else SimulatorConfig()
    if args.n_days is not None:
        base = base.model_copy(update={"n_days": args.n_days})
    rows = build_features(simulate(base), spec.DEFAULT_LABEL_DELAY)
    train = time_splits(rows, SplitConfig(), spec.DEFAULT_LABEL_DELAY).train
    cfg = TuningConfig(n_trials=args.trials, n_folds=args.folds, pruner=args.pruner, nthread=args.nthread)
    pruned = 0

    def count(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal pruned
        pruned += trial.state == optuna.trial.TrialState.PRUNED

    load = os.getloadavg()[0]
    started = time.perf_counter()
    _, best = tune(train, cfg, spec.DEFAULT_LABEL_DELAY, study_callbacks=[count])
    seconds = time.perf_counter() - started
    result = {
        "pruner": args.pruner,
        "train_rows": len(train),
        "trials": args.trials,
        "pruned": pruned,
        "seconds": round(seconds, 1),
        "trials_per_minute": round(args.trials / seconds * 60, 2),
        "best_cv_aucpr": round(best, 4),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
