"""Every benchmark with modest defaults (``make bench``), in well under ten minutes.

    uv run python -m bench.run_all [--json results.json] [--full]

``--full`` uses the sizes quoted in docs/benchmarks.md (longer: about 10-15 minutes).
"""

import json
import time
from collections.abc import Sequence
from typing import Any

from bench import features_offline, scorer, updater
from bench.common import environment, parser
from bench.synthetic import KAGGLE_ROWS

MODEST: dict[str, list[str]] = {
    "scorer": ["--n", "2000", "--stream", "100000", "--cold-runs", "3"],
    "updater": ["--batches", "100"],
    "features_offline": ["--sizes", f"100000,{KAGGLE_ROWS}", "--repeats", "1"],
}
FULL: dict[str, list[str]] = {
    "scorer": ["--n", "5000", "--stream", "100000", "--cold-runs", "5"],
    "updater": ["--batches", "200"],
    "features_offline": ["--sizes", f"100000,1000000,{KAGGLE_ROWS}", "--repeats", "3"],
}


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser("All FraudSys benchmarks.")
    p.add_argument("--full", action="store_true", help="the sizes quoted in docs/benchmarks.md")
    args = p.parse_args(argv)
    plan = FULL if args.full else MODEST
    seed = ["--seed", str(args.seed)]
    started = time.perf_counter()
    results: dict[str, Any] = {"environment": environment()}
    for name, module in (("scorer", scorer), ("updater", updater), ("features_offline", features_offline)):
        t0 = time.perf_counter()
        results[name] = module.run([*plan[name], *seed])
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"({name}: {results[name]['seconds']} s)\n", flush=True)
    targets = {f"{name}: {k}": v for name in plan for k, v in results[name].get("targets", {}).items()}
    print("## Targets")
    for key, value in targets.items():
        print(f"{key}: {value['measured']:,.3f} ({value['target']}) {'MET' if value['met'] else 'MISSED'}")
    print(f"total: {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


def main(argv: Sequence[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
