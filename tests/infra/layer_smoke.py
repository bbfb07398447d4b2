"""Run inside the built layer only: ``python -I -S layer_smoke.py <layer>/python``.

``-I -S``: no PYTHONPATH, no user or venv site-packages, so the only third-party code importable
is the layer's. Prints a JSON summary; any failure raises (non-zero exit).
"""

import importlib
import json
import os
import sys
import sysconfig
import warnings

layer = os.path.abspath(sys.argv[1])
sys.path.insert(0, layer)

import numpy as np  # noqa: E402
import xgboost as xgb  # noqa: E402

rng = np.random.default_rng(7)
features = rng.normal(size=(256, 6)).astype(np.float32)
labels = (features[:, 0] + 0.5 * features[:, 1] > 0.3).astype(np.float32)
trained = xgb.train(
    {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3, "nthread": 1, "seed": 7},
    xgb.DMatrix(features, label=labels),
    num_boost_round=8,
)
# Round-trip through UBJSON, the model.ubj format of the model store.
booster = xgb.Booster()
booster.load_model(bytearray(trained.save_raw(raw_format="ubj")))

batch = features[:4]
probabilities = booster.inplace_predict(batch)
assert probabilities.shape == (4,), probabilities.shape
assert float(probabilities.min()) >= 0.0
assert float(probabilities.max()) <= 1.0
assert np.allclose(probabilities, trained.inplace_predict(batch), atol=1e-6)

contributions = booster.predict(xgb.DMatrix(batch), pred_contribs=True)
assert contributions.shape == (4, features.shape[1] + 1), contributions.shape  # + bias column
margin = booster.predict(xgb.DMatrix(batch), output_margin=True)
assert np.allclose(contributions.sum(axis=1), margin, atol=1e-4)

# handlers.scoring.RowContributions calls these C API functions through the package's library
c_api = importlib.import_module("xgboost._c_api")
for symbol in ("XGDMatrixCreateFromDense", "XGBoosterPredictFromDMatrix", "XGDMatrixFree", "XGBGetLastError"):
    assert hasattr(c_api._LIB, symbol), symbol

scipy = importlib.import_module("scipy")  # the layer's stand-in; not a typed dependency here
assert getattr(scipy, "FRAUDSYS_SHIM", False), "real scipy leaked into the layer"
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Unknown data type ... trying csr_matrix"
        xgb.DMatrix(object())
except TypeError:
    pass
else:
    raise AssertionError("unsupported input must raise TypeError, not silently become sparse")

import aws_lambda_powertools  # noqa: E402
import confluent_kafka  # noqa: E402
import hiredis  # noqa: E402
import pydantic  # noqa: E402
import redis  # noqa: E402
from aws_lambda_powertools import Logger, Metrics  # noqa: E402
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType  # noqa: E402

Logger(service="smoke")
Metrics(namespace="FraudSys", service="smoke")
BatchProcessor(event_type=EventType.KinesisDataStreams)
confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:9"}).flush(0)  # librdkafka loads

stdlib = sysconfig.get_paths()["stdlib"]
outside = sorted(
    name
    for name, module in sys.modules.items()
    if name != "__main__"
    and (path := getattr(module, "__file__", None))
    and not path.startswith((layer, stdlib))
)
assert not outside, f"imported from outside the layer and the stdlib: {outside}"

print(
    json.dumps(
        {
            "python": sys.version.split()[0],
            "xgboost": xgb.__version__,
            "numpy": np.__version__,
            "pydantic": pydantic.VERSION,
            "redis": redis.__version__,
            "hiredis": hiredis.__version__,
            "librdkafka": confluent_kafka.libversion()[0],
            "powertools": getattr(aws_lambda_powertools, "__version__", ""),
            "probabilities": [round(float(p), 6) for p in probabilities],
        }
    )
)
