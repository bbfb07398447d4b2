"""Exact TreeSHAP for one row from a table per leaf (Fast TreeSHAP v2, Yang 2021).

XGBoost's ``pred_contribs`` runs the path-dependent TreeSHAP recursion over every node of every
tree for each row (~0.4 ms for the champion's ~140 trees of depth 6: the largest part of a
score). The same values have a closed form per leaf: a leaf with value ``v`` whose path splits
on the distinct features ``f_1..f_d`` (zero fractions ``z_l``: the products of the path's
cover ratios, ``sum_hessian`` child / parent) gives feature ``f_j``

    phi_j = v (o_j - z_j) sum_k k! (d - k - 1)! / d! * e_k(prod_{l != j} (z_l + o_l x))

where ``o_l`` is 1 when the row satisfies every split on ``f_l`` along the path, else 0, and
``e_k`` is the coefficient of ``x^k``. Only the ``2^d`` patterns of ``o`` can occur, so each
leaf's contributions are computed once per pattern when the model loads; a row then costs one
comparison per path node, a lookup per leaf and a sum per feature (numpy: 0.15 ms against
XGBoost's 0.38-0.45 ms for the bench's champion, 2,658 leaves; docs/benchmarks.md).

The table grows as leaves x 2^depth x depth: a model whose table would exceed ``MAX_TABLE_BYTES``
(the tuner's deepest, 400 trees of depth 8: ~0.47 GB) keeps XGBoost's own computation, as does
any model this module does not describe (not ``gbtree``, categorical splits, vector leaves).
``from_model`` also checks the table against ``pred_contribs`` on probe rows and declines a
model where they differ (``tests/handlers/test_path_shap.py``: equal within float32 rounding on
random, missing and threshold-valued rows).
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fraud_core.features import F64

#: the largest table kept per model (float32); a larger one falls back to XGBoost's TreeSHAP
MAX_TABLE_BYTES = 64 * 2**20
#: probe rows contributions must match XGBoost's on (absolute, float32 rounding of margins ~10)
TOLERANCE = 1e-4


#: the longest path the table takes (its size doubles per level)
MAX_DEPTH = 8


@dataclass(frozen=True)
class _Paths:
    """Every leaf's path as arrays of (leaves, depth) path nodes, from the leaf's parent up to the
    root, padded (a padding node is always satisfied), and its distinct features (slots)."""

    feature: npt.NDArray[np.intp]
    threshold: npt.NDArray[np.float32]  # XGBoost compares float32 values with float32 thresholds
    right: npt.NDArray[np.bool_]  # the path takes the node's right branch
    nan_flip: npt.NDArray[np.bool_]  # a missing value follows the path: (default branch) != right
    pad: npt.NDArray[np.bool_]
    slot: npt.NDArray[np.intp]  # the node's distinct feature on this path (-1: padding)
    slot_feature: npt.NDArray[np.intp]  # (leaves, width): n_features where a leaf has fewer
    zero: F64  # (leaves, width): the product of the slot's cover ratios (child / parent)
    width: npt.NDArray[np.intp]  # distinct features per leaf
    value: F64  # the leaves' values

    @property
    def shape(self) -> tuple[int, int, int]:
        """Leaves, depth (path nodes) and width (distinct features), at least 1 each."""
        return len(self.value), self.feature.shape[1], self.slot_feature.shape[1]


def _paths(trees: list[dict[str, Any]], n_features: int) -> _Paths | None:
    """The leaves' paths of every tree (one array walk per level, all trees at once); None for
    trees this module does not describe (categorical splits, vector leaves, paths deeper than
    ``MAX_DEPTH``)."""
    parts: dict[str, list[Any]] = {k: [] for k in ("left", "parent", "feature", "value", "default", "cover")}
    offset = 0
    for tree in trees:
        if any(tree.get("split_type") or []) or int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
            return None
        left = np.asarray(tree["left_children"], dtype=np.intp)
        right = np.asarray(tree["right_children"], dtype=np.intp)
        inner = np.flatnonzero(left != -1)
        parent = np.full(len(left), -1, dtype=np.intp)
        parent[left[inner]] = inner + offset
        parent[right[inner]] = inner + offset
        parts["left"].append(np.where(left == -1, -1, left + offset))
        parts["parent"].append(parent)
        parts["feature"].append(np.asarray(tree["split_indices"], dtype=np.intp))
        parts["value"].append(np.asarray(tree["split_conditions"], dtype=np.float64))
        parts["default"].append(np.asarray(tree["default_left"], dtype=bool))
        parts["cover"].append(np.asarray(tree["sum_hessian"], dtype=np.float64))
        offset += len(left)
    left_of, parent_of, feature_of, value_of, default_of, cover_of = (
        np.concatenate(parts[k]) for k in ("left", "parent", "feature", "value", "default", "cover")
    )
    leaves = np.flatnonzero(left_of == -1)
    current, active = leaves.copy(), np.ones(len(leaves), dtype=bool)
    levels: list[tuple[Any, Any, Any, Any]] = []  # (node, valid, went left, cover ratio) per level
    while True:
        up = parent_of[current]
        valid = active & (up >= 0)
        if not valid.any():
            break
        if len(levels) == MAX_DEPTH:
            return None
        node = np.where(valid, up, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(cover_of[node] > 0, cover_of[current] / cover_of[node], 0.0)
        levels.append((node, valid, left_of[node] == current, np.where(valid, ratio, 1.0)))
        current, active = np.where(valid, up, current), valid
    count = len(leaves)
    if not levels:  # every tree is one leaf
        levels.append(
            (
                np.zeros(count, dtype=np.intp),
                np.zeros(count, dtype=bool),
                np.ones(count, dtype=bool),
                np.ones(count),
            )
        )
    node, valid, went_left, ratio = (np.stack(level, axis=1) for level in zip(*levels, strict=True))
    depth = node.shape[1]
    pad = ~valid
    right = ~went_left
    follows = default_of[node] == went_left
    # slots: a node's distinct feature is the first node of the path on the same feature
    keyed = np.where(valid, feature_of[node], -1 - np.arange(depth)[None, :])  # paddings all differ
    first = (keyed[:, :, None] == keyed[:, None, :]).argmax(axis=2)
    is_first = (first == np.arange(depth)[None, :]) & valid
    rank = np.cumsum(is_first, axis=1) - 1
    slot = np.where(valid, np.take_along_axis(rank, first, axis=1), -1)
    width = is_first.sum(axis=1)
    slots = max(1, int(width.max()))
    slot_feature = np.full((count, slots), n_features, dtype=np.intp)
    rows, ks = np.nonzero(is_first)
    slot_feature[rows, rank[rows, ks]] = feature_of[node[rows, ks]]
    on_slot = slot[:, :, None] == np.arange(slots)[None, None, :]
    zero = np.where(on_slot, ratio[:, :, None], 1.0).prod(axis=1)
    return _Paths(
        feature=np.where(valid, feature_of[node], 0),
        threshold=np.where(valid, value_of[node], np.inf).astype(np.float32),
        right=right & valid,
        nan_flip=(follows != right) & valid,
        pad=pad,
        slot=slot,
        slot_feature=slot_feature,
        zero=zero,
        width=width,
        value=value_of[leaves],
    )


def _pattern_table(z: F64, v: F64) -> F64:
    """Contributions of leaves with ``d`` distinct features (``z``: (n, d) zero fractions, ``v``:
    (n,) values) for every pattern of satisfied features: (n, 2^d, d)."""
    n, d = z.shape
    patterns = 2**d
    ones = ((np.arange(patterns)[:, None] >> np.arange(d)[None, :]) & 1).astype(bool)  # (P, d)
    weights = [math.factorial(k) * math.factorial(d - k - 1) / math.factorial(d) for k in range(d)]
    out = np.empty((n, patterns, d))
    for j in range(d):
        # coefficients of x^0..x^(d-1) of prod_{l != j} (z_l + o_l x), degree first: (d, n, P)
        poly = np.zeros((d, n, patterns))
        poly[0] = 1.0
        for degree, other in enumerate(x for x in range(d) if x != j):
            z_l = z[:, other, None]
            # the patterns as (n, high bits, bit ``other``, low bits): its 1s are a view
            split = (n, 2 ** (d - 1 - other), 2, 2**other)
            for k in range(degree + 1, 0, -1):  # in place, highest degree first
                poly[k] *= z_l
                poly[k].reshape(split)[:, :, 1] += poly[k - 1].reshape(split)[:, :, 1]
            poly[0] *= z_l
        total = sum(w * poly[k] for k, w in enumerate(weights))
        out[..., j] = v[:, None] * (ones[None, :, j] - z[:, None, j]) * total
    return out


class PathShap:
    """Contributions of one float64 row (``n`` features, then the bias), as ``pred_contribs``."""

    def __init__(self, paths: _Paths, n_features: int, bias: float) -> None:
        count, depth, width = paths.shape
        self.n = n_features
        self.bias = bias
        # a distinct feature is satisfied when every node on it is (padding nodes are always 1):
        # slot s's node mask, then per node pattern the pattern of satisfied distinct features
        on_slot = paths.slot[:, :, None] == np.arange(width)[None, None, :]  # (count, depth, width)
        masks = (on_slot * (1 << np.arange(depth))[None, :, None]).sum(axis=1)  # (count, width)
        node_patterns = np.arange(2**depth)[None, :, None]
        met = (node_patterns & masks[:, None, :]) == masks[:, None, :]  # (count, 2^depth, width)
        slot_pattern = (met * (1 << np.arange(width))[None, None, :]).sum(axis=2)  # (count, 2^depth)
        # per leaf: the contributions of each distinct feature for every pattern of satisfied path
        # nodes (bit k: node k), float32 like XGBoost's output
        table = np.zeros((count, 2**depth, width), dtype=np.float32)
        for d in np.unique(paths.width):
            if d == 0:
                continue  # a tree that is one leaf: its value is in the bias
            members = np.flatnonzero(paths.width == d)
            by_slots = _pattern_table(paths.zero[members, :d], paths.value[members])  # (n, 2^d, d)
            # these leaves have no slot d or above (an empty mask always matches): the low d bits
            index = slot_pattern[members] & (2**d - 1)
            table[members, :, :d] = np.take_along_axis(by_slots, index[:, :, None], axis=1)
        self.table = table.reshape(count * 2**depth, width)
        self.rows = np.arange(count) * 2**depth
        # node arrays as (depth, leaves): one contiguous row per path position
        self.node_feature = np.ascontiguousarray(paths.feature.T)
        self.node_threshold = np.ascontiguousarray(paths.threshold.T)
        self.node_right = np.ascontiguousarray(paths.right.T)
        self.node_nan_flip = np.ascontiguousarray(paths.nan_flip.T)
        self.node_pad = np.ascontiguousarray(paths.pad.T)
        self.slot_feature = paths.slot_feature.ravel()  # feature of each (leaf, distinct feature)

    @staticmethod
    def table_bytes(paths: _Paths) -> int:
        count, depth, width = paths.shape
        return int(count * 2**depth * width * 4)

    def __call__(self, row: F64) -> F64:
        x = row[0].astype(np.float32)  # XGBoost compares float32 values with float32 thresholds
        values = x.take(self.node_feature)
        # not missing: (x < threshold) xor right; missing (the comparison is False): follows
        satisfied = (values < self.node_threshold) ^ self.node_right
        satisfied ^= np.isnan(values) & self.node_nan_flip
        satisfied |= self.node_pad
        bits = satisfied.view(np.uint8)
        pattern = bits[0].astype(np.intp)
        for k in range(1, len(bits)):
            pattern |= bits[k] << k
        contributions = self.table.take(self.rows + pattern, axis=0)
        out = np.bincount(self.slot_feature, contributions.ravel(), minlength=self.n + 1)
        out[self.n] = self.bias
        return out

    @classmethod
    def from_model(
        cls, raw_json: bytes, n_features: int, reference: Callable[[F64], F64]
    ) -> "PathShap | None":
        """The table for a model saved as JSON (``Booster.save_raw("json")``), or None where
        XGBoost's own TreeSHAP must stay (see the module). ``reference``: XGBoost's
        contributions of one row for the same model; the table is checked against it on probe
        rows, and it gives the bias (the expected value: the same for every row)."""
        model = json.loads(raw_json)
        learner = model["learner"]
        booster, objective = learner["gradient_booster"]["name"], learner["objective"]["name"]
        if booster != "gbtree" or objective != "binary:logistic":
            return None
        paths = _paths(learner["gradient_booster"]["model"]["trees"], n_features)
        if paths is None or cls.table_bytes(paths) > MAX_TABLE_BYTES:
            return None
        probes = _probe_rows(paths, n_features)
        expected = [reference(probes[i : i + 1]) for i in range(len(probes))]
        table = cls(paths, n_features, float(expected[0][-1]))
        for i, want in enumerate(expected):
            if not np.allclose(table(probes[i : i + 1]), want, rtol=0, atol=TOLERANCE):
                return None
        return table


def _probe_rows(paths: _Paths, n_features: int, count: int = 16) -> F64:
    """Rows that reach many leaves: each feature at one of its thresholds (exactly, just below,
    or missing) or a random value, drawn reproducibly."""
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 100, (count, n_features))
    used = ~paths.pad
    for f in np.unique(paths.feature[used]):
        values = paths.threshold[used & (paths.feature == f)].astype(np.float64)
        picks = values[rng.integers(0, len(values), count)]
        kind = rng.integers(0, 4, count)
        below = np.nextafter(picks.astype(np.float32), np.float32(-np.inf)).astype(np.float64)
        rows[:, f] = np.select([kind == 0, kind == 1, kind == 2], [picks, below, np.nan], rows[:, f])
    return np.ascontiguousarray(rows)
