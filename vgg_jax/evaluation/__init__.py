"""Evaluation: the paper's test protocols, classifiers from checkpoints or weights, evaluation
of a data set (python -m vgg_jax.evaluate) and prediction on files (python -m vgg_jax.predict)."""
