"""Analyses beyond the paper: trained-model checkpoints, stability criteria,
numeric precision, memory-ability indicators and the audit of the paper's claims.

Each module computes from stored records (``marnn.store``) or from trained
models (:mod:`marnn.analysis.checkpoints`); the book's pages only call them.
"""
