"""Trained classifiers ready to use, `vgg_jax.inference` as the README writes it; they live in
vgg_jax.evaluation.inference.

    classifier = vgg_jax.inference.from_checkpoint("runs/default")          # latest checkpoint
    classifier = vgg_jax.inference.from_weights("vgg16.tv_in1k")            # published weights
"""

from vgg_jax.evaluation.inference import Classifier, from_checkpoint, from_weights

__all__ = ["Classifier", "from_checkpoint", "from_weights"]
