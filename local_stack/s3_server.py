"""The local S3 server: moto's S3 API with every bucket and object kept on disk (shoobx.mocks3).

``python -m local_stack.s3_server --port P --dir D`` serves 127.0.0.1:P. Each object is a folder
under ``D`` (its bytes and a small JSON of its metadata), written before the PUT is answered, so
whatever the server acknowledged survives a kill -9 of it and is there when it starts again. The
conditional PUTs the broker's object store needs (``If-None-Match: *`` to create, ``If-Match:
<etag>`` to update; 412 otherwise) are moto's own.

One request at a time (werkzeug without threads): with threads, some of the broker's objects were
stored empty in a test (its files are not written for concurrent requests); one thread keeps a
PUT or GET of a small object at ~5-8 ms (docs/benchmarks.md), what moto in memory takes.
"""

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True, help="where the buckets are kept")
    args = parser.parse_args(argv)
    folder = args.dir.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    # shoobx.mocks3 reads its settings from a config file, each overridden by the environment
    os.environ.update(
        {
            "SHOOBX_MOCKS3_DIRECTORY": str(folder),
            "SHOOBX_MOCKS3_HOSTNAME": "127.0.0.1",
            "SHOOBX_MOCKS3_LOG_LEVEL": "WARNING",
            "SHOOBX_MOCKS3_RELOAD": "False",
            "SHOOBX_MOCKS3_DEBUG": "False",
        }
    )
    import werkzeug.serving
    from shoobx.mocks3 import config

    app = config.configure(str(folder / "mocks3.cfg"))  # no such file: the defaults and the above
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    werkzeug.serving.run_simple("127.0.0.1", args.port, app, threaded=False, use_reloader=False)


if __name__ == "__main__":
    main()
