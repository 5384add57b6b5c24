"""Training and evaluation engine: trainer, evaluator, checkpoints."""
