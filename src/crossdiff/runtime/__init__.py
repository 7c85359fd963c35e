"""Where a stage runs: the device and dtype (:mod:`.device`) and the torchrun process group
(:mod:`.distributed`).

Neutral ground: harvesting, training, analysis and steering all need them, so they belong to
none of those stages (they used to live in ``models/`` and ``crosscoder/``, which made the
harvest import the crosscoder package for its process group).
"""
