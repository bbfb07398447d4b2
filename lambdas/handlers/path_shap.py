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
comparison per path node, a lookup per leaf and a sum per feature (numpy, ~25x less).

The table grows as leaves x 2^depth x depth: a model whose table would exceed ``MAX_TABLE_BYTES``
(the tuner's deepest, 400 trees of depth 8: ~0.9 GB) keeps XGBoost's own computation, as does
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

F64 = npt.NDArray[np.float64]

#: the largest table kept per model (float64); a larger one falls back to XGBoost's TreeSHAP
MAX_TABLE_BYTES = 64 * 2**20
#: probe rows contributions must match XGBoost's on (absolute, float32 rounding of margins ~10)
TOLERANCE = 1e-4


@dataclass(frozen=True)
class _Leaf:
    value: float
    nodes: list[tuple[int, float, bool, bool, int]]  # feature, threshold, goes left, missing follows, slot
    slots: list[tuple[int, float]]  # distinct feature, zero fraction


def _tree_leaves(tree: dict[str, Any]) -> list[_Leaf] | None:
    left, right = tree["left_children"], tree["right_children"]
    if any(tree.get("split_type") or []) or int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
        return None  # categorical splits or vector leaves: not described here
    feature, condition = tree["split_indices"], tree["split_conditions"]
    default_left, cover = tree["default_left"], tree["sum_hessian"]
    leaves: list[_Leaf] = []
    # (node, path nodes, slots) depth first
    stack: list[tuple[int, list[tuple[int, float, bool, bool, int]], list[tuple[int, float]]]] = [(0, [], [])]
    while stack:
        node, nodes, slots = stack.pop()
        if left[node] == -1:
            leaves.append(_Leaf(float(condition[node]), nodes, slots))
            continue
        f = int(feature[node])
        for child, goes_left in ((left[node], True), (right[node], False)):
            fraction = cover[child] / cover[node] if cover[node] > 0 else 0.0
            new_slots = list(slots)
            slot = next((i for i, (g, _) in enumerate(slots) if g == f), None)
            if slot is None:
                slot = len(new_slots)
                new_slots.append((f, fraction))
            else:
                new_slots[slot] = (f, new_slots[slot][1] * fraction)
            follows = bool(default_left[node]) == goes_left  # a missing value takes this branch
            entry = (f, float(np.float32(condition[node])), goes_left, follows, slot)
            stack.append((child, [*nodes, entry], new_slots))
    return leaves


def _shape(leaves: list[_Leaf]) -> tuple[int, int]:
    """The longest path (nodes) and the most distinct features on one path, at least 1 each."""
    return max(1, *(len(leaf.nodes) for leaf in leaves)), max(1, *(len(leaf.slots) for leaf in leaves))


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
            z_l, o_l = z[:, other, None], ones[:, other]
            for k in range(degree + 1, 0, -1):  # in place, highest degree first
                poly[k] *= z_l
                poly[k][:, o_l] += poly[k - 1][:, o_l]
            poly[0] *= z_l
        total = sum(w * poly[k] for k, w in enumerate(weights))
        out[..., j] = v[:, None] * (ones[None, :, j] - z[:, None, j]) * total
    return out


class PathShap:
    """Contributions of one float64 row (``n`` features, then the bias), as ``pred_contribs``."""

    def __init__(self, leaves: list[_Leaf], n_features: int, bias: float) -> None:
        depth, width = _shape(leaves)
        if depth > 8:
            raise ValueError("paths of more than 8 splits are not tabled")
        count = len(leaves)
        self.n = n_features
        self.bias = bias
        # per path node (padded to ``depth``): a padding node is always satisfied
        self.node_feature = np.zeros((count, depth), dtype=np.intp)
        self.node_threshold = np.full((count, depth), np.inf, dtype=np.float32)
        self.node_right = np.zeros((count, depth), dtype=bool)  # the path takes the right branch
        self.node_nan_flip = np.zeros((count, depth), dtype=bool)  # missing: follows ^ right
        self.node_pad = np.ones((count, depth), dtype=bool)
        # per leaf: the contributions of each distinct feature for every pattern of satisfied path
        # nodes (bit k: node k), float32 like XGBoost's output
        slot_feature = np.full((count, width), n_features, dtype=np.intp)
        self.table = np.zeros((count, 2**depth, width), dtype=np.float32)
        self.rows = np.arange(count) * 2**depth
        by_width: dict[int, list[int]] = {}
        for i, leaf in enumerate(leaves):
            for k, (f, threshold, goes_left, follows, _) in enumerate(leaf.nodes):
                self.node_feature[i, k], self.node_threshold[i, k] = f, threshold
                self.node_right[i, k], self.node_pad[i, k] = not goes_left, False
                self.node_nan_flip[i, k] = follows != (not goes_left)
            for s, (f, _) in enumerate(leaf.slots):
                slot_feature[i, s] = f
            by_width.setdefault(len(leaf.slots), []).append(i)
        # a distinct feature is satisfied when every node on it is (padding nodes are always 1):
        # slot s's node mask, then per node pattern the pattern of satisfied distinct features
        node_slot = np.full((count, depth), -1)
        for i, leaf in enumerate(leaves):
            node_slot[i, : len(leaf.nodes)] = [node[4] for node in leaf.nodes]
        on_slot = node_slot[:, :, None] == np.arange(width)[None, None, :]  # (count, depth, width)
        masks = (on_slot * (1 << np.arange(depth))[None, :, None]).sum(axis=1)  # (count, width)
        node_patterns = np.arange(2**depth)[None, :, None]
        met = (node_patterns & masks[:, None, :]) == masks[:, None, :]  # (count, 2^depth, width)
        slot_pattern = (met * (1 << np.arange(width))[None, None, :]).sum(axis=2)  # (count, 2^depth)
        for d, members in by_width.items():
            if d == 0:
                continue  # a tree that is one leaf: its value is in the bias
            z = np.array([[fraction for _, fraction in leaves[i].slots] for i in members])
            v = np.array([leaves[i].value for i in members])
            by_slots = _pattern_table(z, v)  # (n, 2^d, d)
            # these leaves have no slot d or above (an empty mask always matches): the low d bits
            index = slot_pattern[members] & (2**d - 1)
            self.table[members, :, :d] = np.take_along_axis(by_slots, index[:, :, None], axis=1)
        self.table = self.table.reshape(count * 2**depth, width)
        # node arrays as (depth, leaves): one contiguous row per path position
        for name in ("node_feature", "node_threshold", "node_right", "node_nan_flip", "node_pad"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name).T))
        self.slot_feature = slot_feature.ravel()  # feature of each (leaf, distinct feature)

    @classmethod
    def table_bytes(cls, leaves: list[_Leaf]) -> int:
        depth, width = _shape(leaves)
        return len(leaves) * 2**depth * width * 4 if depth <= 8 else 2**63

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
        leaves: list[_Leaf] = []
        for tree in learner["gradient_booster"]["model"]["trees"]:
            tree_leaves = _tree_leaves(tree)
            if tree_leaves is None:
                return None
            leaves += tree_leaves
        if not leaves or cls.table_bytes(leaves) > MAX_TABLE_BYTES:
            return None
        probes = _probe_rows(leaves, n_features)
        table = cls(leaves, n_features, float(reference(probes[:1])[-1]))
        for i in range(len(probes)):
            row = probes[i : i + 1]
            if not np.allclose(table(row), reference(row), rtol=0, atol=TOLERANCE):
                return None
        return table


def _probe_rows(leaves: list[_Leaf], n_features: int, count: int = 16) -> F64:
    """Rows that reach many leaves: each feature at one of its thresholds (exactly, just below,
    or missing) or a random value, drawn reproducibly."""
    thresholds: dict[int, list[float]] = {}
    for leaf in leaves:
        for f, threshold, *_ in leaf.nodes:
            thresholds.setdefault(f, []).append(threshold)
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 100, (count, n_features))
    for f, values in thresholds.items():
        picks = np.asarray(values)[rng.integers(0, len(values), count)]
        kind = rng.integers(0, 4, count)
        below = np.nextafter(picks.astype(np.float32), np.float32(-np.inf)).astype(np.float64)
        rows[:, f] = np.select([kind == 0, kind == 1, kind == 2], [picks, below, np.nan], rows[:, f])
    return np.ascontiguousarray(rows)
