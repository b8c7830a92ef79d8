"""Sharded state across data-parallel workers (``shard="optimizer"`` / ``"gradients"``).

* :mod:`.layout` -- which part of the flattened weights each worker owns (pure Python/NumPy);
* :mod:`.optimizer_state` -- a fused optimizer's state and update on a worker's pieces;
* :mod:`.window` -- the sharded micro-step and window end inside ``AccumulationWindow``;
* :mod:`.checkpoint` -- per-rank checkpoints merged, and loaded across world sizes.

Imported lazily by the modules that use them (no imports here: ``optim`` imports
``optimizer_state`` while ``window`` imports ``optim``).
"""
