"""The numbers the paper prints (Tables 3-7), one row per table cell.

``data/paper/paper_results.csv`` has one row per table cell (Tables 3-7 of
Das & Mali 2024): source table, dataset, task, model, freeze mode, split,
metric, value.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .paths import PAPER_RESULTS

DATA = PAPER_RESULTS
COLUMNS = ["source", "dataset", "task", "model", "freeze", "split", "metric", "value"]


def load(path: str | Path | None = None) -> pd.DataFrame:
    """The paper's results as a tidy DataFrame (one row per printed number)."""
    path = Path(path) if path else DATA
    if not path.exists():
        raise FileNotFoundError(f"paper results not found at {path}; it ships in data/paper/")
    df = pd.read_csv(path, dtype={"value": float})
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return df[COLUMNS]


def lookup(df: pd.DataFrame | None = None, **where) -> pd.DataFrame:
    """Rows matching every ``column=value`` given, e.g. ``lookup(task="count-3", metric="accuracy")``."""
    df = load() if df is None else df
    for col, val in where.items():
        df = df[df[col] == val]
    return df
