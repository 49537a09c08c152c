"""Exact references: finite Markov chains and CTMCs (``markov``), Brownian motion (``brownian``) and known
data distributions whose ratios are exact (``oracle``: ``SequenceOracle``), the oracles the tests compare with."""
