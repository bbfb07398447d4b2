"""Arguments of the ``fraudsys`` command line shared by tests."""


def tiny_training_args(max_rounds: int) -> list[str]:
    """``--set`` options of ``fraudsys pipeline``/``train`` for a small but real run (60 cards,
    60 days, one trial of 2 folds, at most ``max_rounds`` boosting rounds)."""
    settings = {
        "source.n_cards": 60,
        "source.n_days": 60,
        "tuning.n_trials": 1,
        "tuning.n_folds": 2,
        "tuning.max_rounds": max_rounds,
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
