"""Candidate merchant-risk features, evaluated offline with the prequential backtest (issue 18).

The spec's features are computed once (``training.dataset.build_features``); each candidate
adds columns computed from the same transactions and label events, point in time (labels
count from their arrival), then every feature set is trained and tested on the same periods
as ``fraudsys backtest`` (``training.backtest``: train 56 days, skip the label delay, test 7
days, fixed hyperparameters). Candidates:

* ``risk1d``: the delayed risk window of 1 day, ``[t - delay - 1d, t - delay)``: its transaction
  count, its frauds whose label arrived before ``t`` and their rate (the same rule as the 7d/30d
  windows; online a ``ZCOUNT`` more, no new state);
* ``arrival``: the frauds at the merchant whose label arrived in the last day / 7 days (and
  still holds), whatever their transaction's age within the kept history: sooner than the
  delayed windows where labels arrive before the delay (``--arrivals spread``); online a read
  of the labels that arrived in the window (the arrival index exists);
* ``velocity``: the merchant's transactions in the last hour and its short-window velocity
  against its own baseline (24h count x 7 / 7d count, 1h count x 24 / 24h count; no new state);
* ``cpp`` (common point of purchase, an upper bound: no online structure exists for it): the
  distinct cards with a fraud label that arrived in the last 30 days among the cards seen at the
  merchant in the last 30 days, counted as of the start of the transaction's UTC day (only
  events of earlier days), and its share of the cards seen;
* ``exposure`` (the same link seen from the card, also offline only): over the merchants the
  card visited in the last 30 days, the most distinct other cards with a fraud label (arrived
  in the last 30 days) at one of them, and how many of them have at least two; as of the start
  of the day.

    uv run python -m bench.merchant_risk --periods 8 [--preset kaggle|shifted] [--json out.json]

``shifted`` is a differently seeded and parameterised simulation (seed 11, a third more cards,
compromises 3x as frequent with half the fraud share, more follow-up fraud), not the preset the
pipeline's defaults were built on.
"""

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, roc_auc_score

from fraud_core import spec
from fraud_core.features import compose
from training.asof import floor_day
from training.backtest import BacktestConfig, _target_known_at, card_precision_top_k
from training.data.simulator import FraudRates, SimulatorConfig, kaggle_scale, run_simulation
from training.dataset import build_features, label_chains, label_events_at_delay
from training.evaluate import recall_at_fpr
from training.train import base_params, fit_rounds, predict

I64 = NDArray[np.int64]

CANDIDATES: dict[str, tuple[str, ...]] = {
    "risk1d": ("merch_cnt_delayed_1d", "merch_fraud_cnt_1d", "merch_fraud_rate_1d"),
    "velocity": ("merch_cnt_1h", "merch_velocity_24h_7d", "merch_velocity_1h_24h"),
    "arrival": ("merch_fraud_arrived_1d", "merch_fraud_arrived_7d"),
    "cpp": ("merch_compromised_cards_30d", "merch_compromised_share_30d"),
    "exposure": ("card_max_merchant_fraud_cards_30d", "card_risky_merchants_30d"),
}
SETS: dict[str, tuple[str, ...]] = {
    "base": (),
    "base-reseed": (),  # the spec's features, another seed: the noise of the fit itself
    "risk1d": ("risk1d",),
    "velocity": ("velocity",),
    "arrival": ("arrival",),
    "risk1d+velocity": ("risk1d", "velocity"),
    "cpp": ("cpp",),
    "exposure": ("exposure",),
}


#: ``--arrivals spread``: a label arrives 1 day + an exponential delay of mean 6 days after its
#: transaction (median ~5.2 days, 75 % within ~9.3, ~1 % after 30), instead of exactly the
#: 7-day label delay: some labels arrive before the delay, some after.
SPREAD_MIN, SPREAD_MEAN = spec.DAY, 6 * spec.DAY


def simulation(preset: str, arrivals: str = "fixed") -> tuple[pd.DataFrame, pd.DataFrame]:
    if preset == "kaggle":
        cfg = kaggle_scale()
    else:
        cfg = SimulatorConfig(
            seed=11,
            n_cards=1_300,
            n_merchants=900,
            n_days=300,
            tx_per_card_day=2.0,
            fraud=FraudRates(
                compromised_merchant_per_merchant_year=0.06,
                compromised_fraud_share=0.15,
                compromised_followup_prob=0.5,
                stolen_card_per_card_year=0.4,
            ),
        )
    transactions, followup = simulate_marked(cfg)
    check = run_simulation(cfg).transactions
    if not check["trans_num"].equals(transactions["trans_num"]):
        raise RuntimeError("simulate_marked no longer reproduces run_simulation")
    transactions = transactions.assign(followup=followup)
    labels = label_events_at_delay(transactions, spec.DEFAULT_LABEL_DELAY)
    if arrivals == "spread":
        rng = np.random.default_rng(5)
        wait = SPREAD_MIN + rng.exponential(SPREAD_MEAN, len(labels)).astype(np.int64)
        labels = labels.assign(label_time=labels["event_time"].to_numpy(dtype=np.int64) + wait)
    return transactions, labels


def _between(m_sorted_key: I64, m_sorted_t: I64, key: I64, start: I64, end: I64) -> I64:
    ck = compose(m_sorted_key, m_sorted_t)
    lo = ck.searchsorted(compose(key, start), side="left")
    hi = ck.searchsorted(compose(key, end), side="left")
    return (hi - lo).astype(np.int64)


def candidate_columns(tx: pd.DataFrame, labels: pd.DataFrame, rows: pd.DataFrame, delay: int) -> pd.DataFrame:
    """Every candidate column for the rows of ``tx`` (same order)."""
    n = len(tx)
    t = tx["event_time"].to_numpy(dtype=np.int64)
    codes = pd.factorize(
        np.concatenate([tx["merchant"].astype(str).to_numpy(), labels["merchant"].astype(str).to_numpy()])
    )[0]
    m = codes[:n].astype(np.int64)
    order = np.lexsort((t, m))
    mk, mt = m[order], t[order]
    out: dict[str, Any] = {}

    # risk1d: the same rule as fraud_core.features.merchant_frauds for a 1-day window
    count1d = _between(mk, mt, m, t - delay - spec.DAY, t - delay)
    iv = label_chains(labels, codes[n:])
    ck = compose(iv.key, iv.trans_t)
    lo = ck.searchsorted(compose(m, t - delay - spec.DAY), side="left")
    hi = ck.searchsorted(compose(m, t - delay), side="left")
    lens = hi - lo
    query = np.arange(n).repeat(lens)
    hist = np.arange(int(lens.sum())) + (lo - (lens.cumsum() - lens)).repeat(lens)
    held = (iv.arrival[hist] < t[query]) & (iv.until[hist] >= t[query])
    frauds1d = np.bincount(query, weights=held, minlength=n)
    # arrival: frauds at the merchant whose fraud label arrived in [t - w, t) and still holds at
    # t, whatever the transaction's age within the history the store keeps (delay + 30 days)
    order_a = np.lexsort((iv.arrival, iv.key))
    a_key, a_arrival = iv.key[order_a], iv.arrival[order_a]
    a_until, a_trans_t = iv.until[order_a], iv.trans_t[order_a]
    ca = compose(a_key, a_arrival)
    for suffix, seconds in (("1d", spec.DAY), ("7d", 7 * spec.DAY)):
        lo_a = ca.searchsorted(compose(m, t - seconds), side="left")
        hi_a = ca.searchsorted(compose(m, t), side="left")
        lens_a = hi_a - lo_a
        q_a = np.arange(n).repeat(lens_a)
        h_a = np.arange(int(lens_a.sum())) + (lo_a - (lens_a.cumsum() - lens_a)).repeat(lens_a)
        holds = (a_until[h_a] >= t[q_a]) & (a_trans_t[h_a] >= t[q_a] - delay - spec.MAX_MERCHANT_RISK_WINDOW)
        out[f"merch_fraud_arrived_{suffix}"] = np.bincount(q_a, weights=holds, minlength=n)
    out["merch_cnt_delayed_1d"] = count1d
    out["merch_fraud_cnt_1d"] = frauds1d
    out["merch_fraud_rate_1d"] = np.where(count1d > 0, frauds1d / np.maximum(count1d, 1), 0.0)

    # velocity: short windows against the merchant's own baseline
    cnt1h = _between(mk, mt, m, t - spec.HOUR, t)
    cnt24 = rows["merch_cnt_24h"].to_numpy()
    cnt7d = rows["merch_cnt_7d"].to_numpy()
    out["merch_cnt_1h"] = cnt1h
    out["merch_velocity_24h_7d"] = np.where(cnt7d > 0, cnt24 * 7.0 / np.maximum(cnt7d, 1), 1.0)
    out["merch_velocity_1h_24h"] = np.where(cnt24 > 0, cnt1h * 24.0 / np.maximum(cnt24, 1), 1.0)

    # cpp, as of the start of each UTC day (only events of earlier days)
    day = (t // spec.DAY).astype(np.int64)
    d0 = int(day.min())
    nd = int(day.max()) - d0 + 1
    card = pd.factorize(tx["cc_num"].astype(str))[0]
    n_m, n_c = int(m.max()) + 1, int(card.max()) + 1
    visits = pd.DataFrame({"d": day - d0, "m": m, "c": card}).drop_duplicates()
    # a fraud label's card: the labelled transaction's card (labels name the transaction)
    card_of = pd.Series(card, index=tx["trans_num"].astype(str).to_numpy())
    card_of = card_of[~card_of.index.duplicated()]
    fraud_labels = labels.loc[labels["is_fraud"].to_numpy() == 1]
    lab_card = card_of.reindex(fraud_labels["trans_num"].astype(str).to_numpy()).to_numpy()
    lab_day = (fraud_labels["label_time"].to_numpy(dtype=np.int64) // spec.DAY) - d0
    ok = ~np.isnan(lab_card.astype(float))
    lab_m = codes[n:][labels["is_fraud"].to_numpy() == 1]
    lab = pd.DataFrame({"d": lab_day[ok], "c": lab_card[ok].astype(np.int64), "m": lab_m[ok]})
    by_day_visits = {d: g for d, g in visits.groupby("d")}
    by_day_labels = {d: g for d, g in lab.groupby("d")}
    window = 30
    seen = np.zeros((n_m, n_c), dtype=np.int32)  # visits of the last 30 days
    flagged = np.zeros(n_c, dtype=np.int32)  # fraud labels that arrived in the last 30 days
    comp = np.zeros((nd, n_m))
    cards_seen = np.zeros((nd, n_m))
    lab_mc = np.zeros((n_m, n_c), dtype=np.int32)  # fraud labels of the last 30 days by merchant, card
    exposure = np.zeros((nd, n_c))
    exposure2 = np.zeros((nd, n_c))
    for d in range(nd):
        # state = events of days [d - 30, d)
        comp[d] = (seen > 0).astype(np.float32) @ (flagged > 0).astype(np.float32)
        cards_seen[d] = (seen > 0).sum(axis=1)
        # distinct other cards with a fraud label at the merchant, for each (merchant, card)
        fraud_cards = lab_mc > 0
        others = np.where(seen > 0, fraud_cards.sum(axis=1)[:, None] - fraud_cards, 0)
        exposure[d] = others.max(axis=0)
        exposure2[d] = (others >= 2).sum(axis=0)
        if d in by_day_visits:
            g = by_day_visits[d]
            np.add.at(seen, (g["m"].to_numpy(), g["c"].to_numpy()), 1)
        if d in by_day_labels:
            np.add.at(flagged, by_day_labels[d]["c"].to_numpy(), 1)
            np.add.at(lab_mc, (by_day_labels[d]["m"].to_numpy(), by_day_labels[d]["c"].to_numpy()), 1)
        if d - window + 1 >= 0:
            old = d - window + 1
            if old in by_day_visits:
                g = by_day_visits[old]
                np.add.at(seen, (g["m"].to_numpy(), g["c"].to_numpy()), -1)
            if old in by_day_labels:
                np.add.at(flagged, by_day_labels[old]["c"].to_numpy(), -1)
                g = by_day_labels[old]
                np.add.at(lab_mc, (g["m"].to_numpy(), g["c"].to_numpy()), -1)
    # lab days may fall beyond the last transaction day: ignored (never seen by a row)
    c = comp[day - d0, m]
    s = cards_seen[day - d0, m]
    out["merch_compromised_cards_30d"] = c
    out["merch_compromised_share_30d"] = np.where(s > 0, c / np.maximum(s, 1), 0.0)
    out["card_max_merchant_fraud_cards_30d"] = exposure[day - d0, card]
    out["card_risky_merchants_30d"] = exposure2[day - d0, card]
    return pd.DataFrame(out, index=tx.index)


def simulate_marked(cfg: SimulatorConfig) -> tuple[pd.DataFrame, NDArray[np.bool_]]:
    """``run_simulation``, step for step (the same rows), and which compromised-merchant frauds
    are follow-ups on the exposed cards at other merchants rather than frauds at the compromised
    merchant itself: a diagnostic of where the scenario's misses are, simulator data only."""
    import copy

    from training.data import simulator as sim

    streams = iter(np.random.default_rng(child) for child in np.random.SeedSequence(cfg.seed).spawn(10))
    world = sim._World(cfg)
    cards = sim._make_cards(cfg, next(streams))
    merchants = sim._make_merchants(cfg, next(streams))
    legit = sim._legit_transactions(cfg, world, cards, merchants, next(streams))
    legit = sim._apply_trips(cfg, world, cards, merchants, legit, next(streams))
    legit = sim._place_stores(cards, merchants, legit, next(streams))
    parts = [
        legit,
        sim._stolen_card_bursts(cfg, world, cards, merchants, next(streams)),
        sim._card_testing(cfg, world, cards, merchants, next(streams)),
        sim._geo_jumps(cfg, world, cards, merchants, legit, next(streams)),
    ]
    parts[0], followups = sim._compromised_merchants(cfg, world, cards, merchants, legit, next(streams))
    parts.append(replace(followups, trip=np.full(len(followups), -2, dtype=np.int64)))
    tx = sim._Tx.concat(parts).within(world.t0, world.t1)
    rng = next(streams)
    _, high, low = sim._trans_nums(len(tx), copy.deepcopy(rng))
    order = np.lexsort((high, tx.time))
    if ((np.diff(tx.time[order]) == 0) & (np.diff(high[order]) == 0)).any():
        order = np.lexsort((low, high, tx.time))
    frame, scenario = sim._to_frame(tx, cards, merchants, rng)
    return frame.assign(scenario=scenario.to_numpy()), np.asarray(tx.trip[order] == -2, dtype=bool)


def run(
    tx: pd.DataFrame, labels: pd.DataFrame, cfg: BacktestConfig, sets: Sequence[str], delay: int
) -> list[dict[str, Any]]:
    started = time.perf_counter()
    rows = build_features(tx, delay, labels=labels)
    rows = pd.concat([rows, candidate_columns(tx, labels, rows, delay)], axis=1)
    print(f"features: {time.perf_counter() - started:.1f} s, {len(rows)} rows", flush=True)
    t = rows["event_time"].to_numpy(dtype=np.int64)
    end = floor_day(int(t.max()) + 1)
    step = cfg.test_days * spec.DAY
    first = end - cfg.periods * step
    scenario = tx["scenario"].to_numpy().astype(str)
    at_merchant = ~tx["followup"].to_numpy()
    results = []
    for i in range(cfg.periods):
        test_start = first + i * step
        train_end = floor_day(test_start - delay)
        in_train = (t >= train_end - cfg.train_days * spec.DAY) & (t < train_end)
        in_test = (t >= test_start) & (t < test_start + step)
        train = rows.loc[in_train].assign(is_fraud=_target_known_at(tx.loc[in_train], labels, test_start))
        test = rows.loc[in_test]
        y = test["is_fraud"].to_numpy().astype(int)
        sc = scenario[in_test]
        for name in sets:
            features = list(spec.FEATURE_NAMES) + [c for cand in SETS[name] for c in CANDIDATES[cand]]
            seed = cfg.seed + 1 if name == "base-reseed" else cfg.seed
            params = {**base_params(train, cfg.nthread, seed), **cfg.params}
            booster = fit_rounds(train, params, cfg.rounds, features)
            p = predict(booster, test, features)
            cp, _ = card_precision_top_k(t[in_test] // spec.DAY, test["cc_num"].to_numpy(), y, p, cfg.top_k)
            legit = p[y == 0]
            thr = float(np.quantile(legit, 0.99, method="higher"))
            cm = (y == 1) & (sc == "compromised_merchant")
            # CP@100 restricted to the compromised-merchant scenario's cards: the top-100 cards'
            # share that are compromised-merchant victims (per day, as the book's CP@k)
            y_cm = cm.astype(int)
            cp_cm, _ = card_precision_top_k(
                t[in_test] // spec.DAY, test["cc_num"].to_numpy(), y_cm, p, cfg.top_k, remove_detected=False
            )
            r = {
                "period": i + 1,
                "test_start": str(np.datetime64(test_start, "s").astype("datetime64[D]")),
                "set": name,
                "test_frauds": int(y.sum()),
                "cm_frauds": int(cm.sum()),
                "roc_auc": float(roc_auc_score(y, p)),
                "ap": float(average_precision_score(y, p)),
                "recall_1pct": recall_at_fpr(y, p),
                "cp100": cp,
                "cm_recall_1pct": float((p[cm] > thr).mean()) if cm.any() else float("nan"),
                "cm_cp100": cp_cm,
            }
            for part, mask in (
                ("at_merchant", cm & at_merchant[in_test]),
                ("followup", cm & ~at_merchant[in_test]),
            ):
                r[f"cm_{part}_frauds"] = int(mask.sum())
                r[f"cm_{part}_recall_1pct"] = float((p[mask] > thr).mean()) if mask.any() else float("nan")
            results.append(r)
            print(json.dumps(r), flush=True)
    return results


METRICS = ("roc_auc", "ap", "recall_1pct", "cp100", "cm_recall_1pct", "cm_cp100")


def summary(results: list[dict[str, Any]]) -> pd.DataFrame:
    """Per feature set: the median of each metric over the periods, the median of its per-period
    difference to ``base`` and wins/losses/periods; the same test week (by its start) is one
    period whichever run it came from (the base model is deterministic: one thread, one seed)."""
    # one row per (week, set), each field from the first run that has it
    frame = pd.DataFrame(results).groupby(["test_start", "set"], sort=False).first().reset_index()
    base = frame[frame["set"] == "base"].set_index("test_start")
    rows = []
    for name, group in frame.groupby("set", sort=False):
        g = group.set_index("test_start")
        row: dict[str, Any] = {"set": name, "periods": len(g)}
        metrics = [
            *METRICS,
            *(m for m in ("cm_at_merchant_recall_1pct", "cm_followup_recall_1pct") if m in g),
        ]
        for metric in metrics:
            row[metric] = float(g[metric].median())
            delta = (g[metric] - base[metric].reindex(g.index)).dropna()
            row[f"d_{metric}"] = float(delta.median()) if len(delta) else float("nan")
            row[f"wins_{metric}"] = f"{int((delta > 0).sum())}/{int((delta < 0).sum())}/{len(delta)}"
        rows.append(row)
    return pd.DataFrame(rows)


def read_results(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Results from ``--json`` files or from the runs' printed lines (one JSON object a line)."""
    out: list[dict[str, Any]] = []
    for path in paths:
        with open(path) as f:
            text = f.read()
        if text.lstrip().startswith("{\n") or text.lstrip().startswith('{"preset"'):
            out += json.loads(text)["results"]
        else:
            out += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("kaggle", "shifted"), default="kaggle")
    parser.add_argument("--periods", type=int, default=8)
    parser.add_argument(
        "--arrivals", choices=("fixed", "spread"), default="fixed", help="label arrivals (SPREAD_MEAN)"
    )
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--nthread", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--summarize", nargs="+", metavar="RESULTS", help="only summarize earlier runs")
    args = parser.parse_args()
    if args.summarize:
        with pd.option_context("display.width", 300, "display.max_columns", 60):
            print(
                summary(read_results(args.summarize)).to_string(
                    index=False, float_format=lambda v: f"{v:.4f}"
                )
            )
        return
    started = time.perf_counter()
    tx, labels = simulation(args.preset, args.arrivals)
    print(
        f"simulation {args.preset}: {len(tx)} transactions, {time.perf_counter() - started:.1f} s", flush=True
    )
    cfg = BacktestConfig(periods=args.periods, rounds=args.rounds, nthread=args.nthread)
    results = run(tx, labels, cfg, args.sets.split(","), spec.DEFAULT_LABEL_DELAY)
    table = summary(results)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wall {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "periods": args.periods, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
