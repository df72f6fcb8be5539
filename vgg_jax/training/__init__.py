"""Training: the pure train and eval steps, the optimiser and learning rate, metrics,
checkpoints, warm starts, the loop behind train.py and what it reports."""
