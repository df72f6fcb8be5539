"""Data: where data sets come from (sources), the paper's preprocessing as tf ops, the training
and evaluation pipelines, test-time rescaling, and the one normalisation done on device."""
