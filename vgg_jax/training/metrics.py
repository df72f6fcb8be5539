"""Classification metrics: the training loss and the one top-k rule that training-time
evaluation, the train step's metrics and the evaluate command all use."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example multinomial logistic loss, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def correct_top_k(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per-example 1.0 where the label is among the k highest scores (logits or posteriors).

    Ranked by how many classes score strictly higher, so a label tied with others counts as
    ranked first among them.
    """
    k = min(k, scores.shape[-1])
    label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
    return (jnp.sum(scores > label_score, axis=-1) < k).astype(jnp.float32)


def top_k_errors(posteriors, labels, ks=(1, 5)) -> dict[int, float]:
    """{k: top-k error in %} of host arrays, by correct_top_k's rule."""
    posteriors, labels = jnp.asarray(posteriors), jnp.asarray(labels)
    missed = {k: 1.0 - np.asarray(correct_top_k(posteriors, labels, k), np.float64) for k in ks}
    return {k: float(100.0 * np.mean(missed[k])) for k in ks}
