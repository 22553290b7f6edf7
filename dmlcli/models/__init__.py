"""Models: backbones, DML heads, the batched :class:`Ensemble`, decision rules, checkpoints."""
