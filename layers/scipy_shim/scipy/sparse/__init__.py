"""Sparse-matrix type names that never match and cannot be built (see ``scipy/__init__.py``)."""

from typing import NoReturn

__all__ = [
    "coo_array",
    "coo_matrix",
    "csc_array",
    "csc_matrix",
    "csr_array",
    "csr_matrix",
    "issparse",
    "sparray",
    "spmatrix",
    "vstack",
]

_MESSAGE = "scipy.sparse is not available in the FraudSys Lambda layer; pass dense numpy arrays"


class _Unavailable:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(_MESSAGE)


class spmatrix(_Unavailable):  # noqa: N801 - SciPy's public names
    """Never instantiated: ``isinstance(x, spmatrix)`` is always False."""


class sparray(_Unavailable):  # noqa: N801
    """Never instantiated."""


class csr_matrix(spmatrix):  # noqa: N801
    """Never instantiated."""


class csc_matrix(spmatrix):  # noqa: N801
    """Never instantiated."""


class coo_matrix(spmatrix):  # noqa: N801
    """Never instantiated."""


class csr_array(sparray):  # noqa: N801
    """Never instantiated."""


class csc_array(sparray):  # noqa: N801
    """Never instantiated."""


class coo_array(sparray):  # noqa: N801
    """Never instantiated."""


def issparse(x: object) -> bool:
    return False


def vstack(*args: object, **kwargs: object) -> NoReturn:
    raise TypeError(_MESSAGE)
