"""Data: where data sets come from (sources), the paper's preprocessing as tf ops, the training
and evaluation pipelines, test-time rescaling, and the one normalisation done on device."""

import os

# TensorFlow prints its C++ start-up lines (oneDNN's "custom operations are on", absl's "before
# InitializeLog") once for each of its two native libraries, before its log level applies, on
# every command. With oneDNN's TensorFlow ops off (the pipeline's decode, crop and resize do not
# use them; images/s were no lower) and INFO hidden, it prints nothing. The package sets
# these before any of its modules imports TensorFlow; a value the user set is kept.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from vgg_jax._submodules import submodule_loader

__getattr__ = submodule_loader(__name__)  # vgg_jax.data.<module> without importing it
