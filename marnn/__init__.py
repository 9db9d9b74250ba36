"""marnn: reproducible companion to Das & Mali (2024), memory-augmented RNNs.

Subpackages: :mod:`marnn.tasks` (the seven languages), :mod:`marnn.models`
(LSTM, superposition and nondeterministic stacks), :mod:`marnn.train`
(training loops and evaluation), :mod:`marnn.ptb` (Penn Treebank),
:mod:`marnn.store` (result records), :mod:`marnn.cli` (command line).
"""
__version__ = "0.1.0"
