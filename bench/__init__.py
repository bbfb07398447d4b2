"""Benchmarks of the scorer, the feature updater and the offline feature build.

Speed targets live here, not in timed tests. Every script starts its own redis-server on a free
port (``tests.support.services.redis_server``), prints a results table and can write ``--json``.
Run from the repository root: ``uv run python -m bench.run_all`` (results: docs/benchmarks.md).
"""
