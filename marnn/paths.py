"""Where things live: the repository root and the folders under it (the one place that computes them).

``REPO`` is the checkout that holds this package (an editable install points
here). ``DATA`` holds the vendored inputs (``ptb/``, ``paper/``); ``RESULTS`` is
the default result store (:func:`results_dir` lets ``--results`` or
``$MARNN_RESULTS`` override it); ``NOTEBOOKS`` holds the page sources.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
PTB_DATA = DATA / "ptb"
PAPER_RESULTS = DATA / "paper" / "paper_results.csv"
RESULTS = REPO / "results"
NOTEBOOKS = REPO / "notebooks"
RESULTS_ENV = "MARNN_RESULTS"  # the environment variable that moves the result store


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """The store's root: ``path``, else ``$MARNN_RESULTS``, else ``<repo>/results``."""
    if path:
        return Path(path)
    env = os.environ.get(RESULTS_ENV)
    return Path(env) if env else RESULTS

__all__ = ["REPO", "DATA", "PTB_DATA", "PAPER_RESULTS", "RESULTS", "NOTEBOOKS", "RESULTS_ENV", "results_dir"]
