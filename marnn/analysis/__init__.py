"""Analyses beyond the paper: the grid's trained weights, stability criteria,
numeric precision, memory-ability indicators and the audit of the paper's claims.

Each module computes from stored records (``marnn.store``) or from trained
models (:mod:`marnn.analysis.weights`); the book's pages only call them.
"""
