"""Small synthetic transaction streams for tests: dense bursts, same-second ties, window edges."""

import numpy as np
import pandas as pd

from fraud_core import spec

MERCHANT_NAMES = ("fraud_Rippin, Kub and Mann", "fraud_Heller-Gutmann", "fraud_Lind-Buckridge", "Café Zoë")


def synthetic_stream(
    n: int = 2000, n_cards: int = 25, n_merchants: int = 12, days: int = 60, seed: int = 7
) -> pd.DataFrame:
    """A canonical frame (training.data schema subset) with ties, bursts and edge-exact gaps."""
    rng = np.random.default_rng(seed)
    start = 1_577_836_800  # 2020-01-01
    base = np.sort(rng.integers(start, start + days * spec.DAY, n))
    # Bursts, ties and gaps of exactly one window length.
    idx = rng.choice(n, n // 5, replace=False)
    base[idx] = base[rng.choice(n, n // 5)] + rng.choice(
        [0, 0, 1, 60, 3600, 6 * 3600, spec.DAY, 7 * spec.DAY], n // 5
    )
    cards = rng.integers(0, n_cards, n)
    merchants = [
        MERCHANT_NAMES[m] if m < len(MERCHANT_NAMES) else f"merchant {m}"
        for m in rng.integers(0, n_merchants, n)
    ]
    home_lat = rng.uniform(25, 48, n_cards)
    home_long = rng.uniform(-120, -70, n_cards)
    df = pd.DataFrame(
        {
            "trans_num": [f"{x:032x}" for x in rng.integers(0, 2**62, n)],
            "cc_num": [str(4_000_000_000_000 + c) for c in cards],
            "merchant": merchants,
            "category": rng.choice(spec.CATEGORIES, n),
            "amt": np.round(
                np.where(rng.random(n) < 0.05, rng.uniform(500, 25_000, n), rng.lognormal(3.5, 1.0, n)), 2
            ).clip(0.01),
            "event_time": base,
            "lat": home_lat[cards],
            "long": home_long[cards],
            "merch_lat": home_lat[cards] + rng.normal(0, 1.5, n),
            "merch_long": home_long[cards] + rng.normal(0, 1.5, n),
            "city_pop": rng.integers(100, 2_000_000, n),
            "dob": np.where(rng.random(n_cards) < 0.9, "1975-06-15", "2001-02-28")[cards],
            "is_fraud": (rng.random(n) < 0.06).astype(np.int8),
        }
    )
    return df.sort_values(["event_time", "trans_num"]).reset_index(drop=True)
