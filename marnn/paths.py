"""Where things live: the repository root and the folders under it (the one place that computes them).

``REPO`` is the checkout that holds this package (an editable install points
here). ``DATA`` holds the vendored inputs (``ptb/``, ``paper/``); ``RESULTS`` is
the default result store (:func:`marnn.store.results_dir` lets ``--results`` or
``$MARNN_RESULTS`` override it); ``NOTEBOOKS`` holds the page sources.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
PTB_DATA = DATA / "ptb"
PAPER_RESULTS = DATA / "paper" / "paper_results.csv"
RESULTS = REPO / "results"
NOTEBOOKS = REPO / "notebooks"

__all__ = ["REPO", "DATA", "PTB_DATA", "PAPER_RESULTS", "RESULTS", "NOTEBOOKS"]
