"""Jitted init and apply for tests: one compilation per model instead of one per operation."""

import functools

import jax
import numpy as np


def images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def init(model, x, seed=0):
    return jax.jit(model.init)(jax.random.key(seed), x)


@functools.cache
def _jitted_apply(model, options):
    return jax.jit(lambda variables, x, rngs: model.apply(variables, x, rngs=rngs, **dict(options)))


def apply(model, variables, x, rngs=None, **options):
    """model.apply under jit; options (train, dense, layers, method, mutable) are static."""
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    return _jitted_apply(model, frozen)(variables, x, rngs)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def tree_relative_error(actual, expected):
    """relative_error over all leaves of two pytrees of the same structure, as one vector."""
    flatten = lambda tree: np.concatenate(
        [np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)]
    )
    return relative_error(flatten(actual), flatten(expected))
