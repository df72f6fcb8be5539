"""The commands, each a thin layer over the library (argument parsing, messages, exit codes):

    python -m vgg_jax.cli.evaluate   the paper's test protocols on a data set (vgg-jax-evaluate)
    python -m vgg_jax.cli.predict    the top classes of image files (vgg-jax-predict)

train.py, at the repository root, trains; `python -m vgg_jax` prints a configuration's layers.
The work itself is in vgg_jax.evaluation; these modules only start it."""
