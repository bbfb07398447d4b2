"""Import-time stand-in for SciPy inside the FraudSys Lambda layer (not SciPy).

xgboost-cpu 3.x does ``import scipy.sparse`` at the top of ``xgboost/core.py`` and looks up
``scipy.sparse.csr_matrix`` & co. for ``isinstance`` checks when it dispatches input data. The
scorer only passes dense numpy arrays (``Booster.inplace_predict``, ``DMatrix(numpy)``,
``pred_contribs``), so those checks only need the names to exist. Real SciPy would add ~100 MB
to a layer whose limit is 250 MB. Anything else imported from this package fails loudly.
"""

__version__ = "0.0.0+fraudsys.shim"
FRAUDSYS_SHIM = True


def __getattr__(name: str) -> object:
    raise AttributeError(
        f"scipy.{name} is not available: the FraudSys Lambda layer ships a scipy.sparse stand-in only"
    )
