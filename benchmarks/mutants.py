"""The one-line bugs benchmarks/mutation.py plants, one at a time, and the tests that must
catch each module's.

Each mutant is a bug someone could write while implementing the paper's recipe or protocols:
a text that must occur exactly once in its module and what replaces it. A mutant whose text
is gone (the code was rewritten) is reported as stale, not skipped quietly: update its text.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Mutant:
    module: str  # path from the repository root
    before: str
    after: str
    bug: str  # what the mutant computes wrongly, in words
    # Why the mutant computes the same as the code, where it does: it is listed (so that the
    # reason is kept) but not run.
    equivalent: str = ""


# Pytest arguments per module, cheapest killers first (-x stops at the first failure). The
# two-process test is left out: it compares two runs of the same (mutated) tree, so it checks
# the distribution, not the recipe, and costs 40 s a mutant.
TWO_PROCESS = (
    "tests/training/test_steps.py::test_two_processes_equal_one_process_with_four_devices"
)
# The scripted run whose learning rate is logged as it decays.
SCRIPTED_PLATEAU = (
    "tests/training/test_checkpoints.py::"
    "test_the_best_checkpoint_is_the_latest_of_equals_and_stays_on_disk"
)
TESTS = {
    "vgg_jax/training/optim.py": [
        "tests/training/test_optim.py",
        "tests/training/test_steps.py",
        SCRIPTED_PLATEAU,
    ],
    "vgg_jax/training/steps.py": ["tests/training/test_optim.py", "tests/training/test_steps.py"],
    "vgg_jax/training/metrics.py": [
        "tests/training/test_optim.py",
        "tests/evaluation/test_protocols.py",
        "tests/training/test_steps.py",
    ],
    "vgg_jax/training/loop.py": ["tests/training/test_loop.py", SCRIPTED_PLATEAU],
    "vgg_jax/evaluation/protocols.py": [
        "tests/evaluation/test_protocols.py",
        "tests/evaluation/test_evaluate.py",
    ],
    "vgg_jax/data/preprocessing.py": [
        "tests/data/test_preprocessing.py",
        "tests/data/test_pipeline.py",
    ],
    "vgg_jax/data/normalization.py": [
        "tests/data/test_preprocessing.py",
        "tests/training/test_optim.py",
        "tests/data/test_pipeline.py",
        "tests/training/test_steps.py",
    ],
}

OPTIM, STEPS, METRICS, LOOP = (
    f"vgg_jax/training/{m}.py" for m in ("optim", "steps", "metrics", "loop")
)
PROTOCOLS = "vgg_jax/evaluation/protocols.py"
PREPROCESSING, NORMALIZATION = "vgg_jax/data/preprocessing.py", "vgg_jax/data/normalization.py"

MUTANTS = [
    # The optimiser and its learning rate (Section 3.1).
    Mutant(OPTIM, "return jax.tree.map(lambda update: update * plateau.scale, updates)",
           "return updates", "plateau decay ignored by the update"),
    Mutant(OPTIM, "optax.clip_by_global_norm(optimizer.grad_clip_norm)",
           "optax.clip(optimizer.grad_clip_norm)", "element-wise clipping instead of global norm"),
    Mutant(OPTIM, "momentum=optimizer.momentum,", "momentum=None,", "no momentum"),
    Mutant(OPTIM, "nesterov=optimizer.nesterov)", "nesterov=False)", "Nesterov ignored"),
    Mutant(OPTIM, "mask=kernel_mask", "mask=None", "weight decay on biases and BN too"),
    Mutant(OPTIM, "return base_learning_rate * batch_size / 256",
           "return base_learning_rate", "no linear scaling of the rate"),
    Mutant(OPTIM, "PLATEAU_FACTOR = 0.1", "PLATEAU_FACTOR = 0.5", "rate halved, not / 10"),
    Mutant(OPTIM, "min_scale=PLATEAU_FACTOR**PLATEAU_MAX_DECAYS", "min_scale=0.0",
           "more than three decays"),
    Mutant(OPTIM, "value=jnp.float32(validation_error)", "value=jnp.float32(-validation_error)",
           "plateau fed accuracy-like values (decays while improving)"),
    Mutant(OPTIM, 'decays_on_plateau=config.schedule.lr_schedule == "paper"',
           'decays_on_plateau=config.schedule.lr_schedule != "paper"', "decay on the wrong schedules"),
    Mutant(OPTIM, "return float(self.schedule(step) * plateau.scale)",
           "return float(self.schedule(step))", "logged rate ignores the decay"),
    # The train and eval steps.
    Mutant(STEPS, "grads = lax.pmean(grads, AXIS_NAME)", "grads = lax.psum(grads, AXIS_NAME)",
           "gradients summed over devices"),
    Mutant(STEPS, "updates = setup.learning_rate.scale_updates(updates, state.plateau)",
           "updates = updates", "train step ignores the plateau decay"),
    Mutant(STEPS, 'return jnp.mean(cross_entropy(logits, batch["label"])), (logits',
           'return jnp.sum(cross_entropy(logits, batch["label"])), (logits',
           "loss summed over the batch"),
    Mutant(STEPS, '"top1_correct": jnp.sum(correct_top_k(logits, batch["label"], 1) * mask)',
           '"top1_correct": jnp.sum(correct_top_k(logits, batch["label"], 1))',
           "evaluation counts padding as examples"),
    Mutant(STEPS, '"count": jnp.sum(mask)', '"count": jnp.float32(mask.shape[0])',
           "evaluation divides by the padded batch"),
    Mutant(STEPS, "state.step), lax.axis_index(AXIS_NAME)", "state.step), 0",
           "the same dropout mask on every device"),
    Mutant(STEPS, '"top5_accuracy": jnp.mean(correct_top_k(logits, batch["label"], 5))',
           '"top5_accuracy": jnp.mean(correct_top_k(logits, batch["label"], 1))',
           "training top-5 is top-1"),
    # The loss and top-k.
    Mutant(METRICS, "labels[:, None], axis=-1)", "labels[:, None] * 0, axis=-1)",
           "top-k against class 0"),
    Mutant(METRICS, "< k).astype", "<= k).astype", "top-k counts k+1 classes"),
    Mutant(METRICS, "scores > label_score", "scores >= label_score", "ties count against"),
    Mutant(METRICS, "k = min(k, scores.shape[-1])", "k = k", "k above the class count",
           equivalent="at most C - 1 classes score above the label, so `< k` holds for every "
                      "k >= C, clipped to C or not"),
    Mutant(METRICS, "return {k: float(100.0 * np.mean(missed[k])) for k in ks}",
           "return {k: float(np.mean(missed[k])) for k in ks}", "errors as fractions, not %"),
    Mutant(METRICS, "logits.astype(jnp.float32), labels", "logits, labels",
           "the loss in the compute dtype"),
    # The training loop's plateau and evaluation bookkeeping.
    Mutant(LOOP, 'after_evaluation(before, 1.0 - metrics["top1_accuracy"])',
           'after_evaluation(before, metrics["top1_accuracy"])',
           "plateau fed accuracy instead of error"),
    Mutant(LOOP, "state = state.replace(plateau=replicate(plateau))",
           "state = state", "the devices never see the decay"),
    Mutant(LOOP, 'best_rank(metrics, at.step) > best_rank(best, best["step"])',
           'best_rank(metrics, at.step) < best_rank(best, best["step"])', "worst kept as best"),
    Mutant(LOOP, '"loss": float(totals["loss"] / count)', '"loss": float(totals["loss"])',
           "validation loss not averaged"),
    Mutant(LOOP, '"top5_accuracy": float(totals["top5_correct"] / count)',
           '"top5_accuracy": float(totals["top1_correct"] / count)', "top-5 reported as top-1"),
    # The test protocols (Section 3.2).
    Mutant(PROTOCOLS, 'multi_crop_posteriors(model, variables, images, crop)\n',
           "multi_crop_posteriors(model, variables, images, crop, flip=False)\n",
           "multi-crop without its mirrored views"),
    Mutant(PROTOCOLS, 'out["dense"] = dense_posteriors(model, variables, images)',
           'out["dense"] = dense_posteriors(model, variables, images, flip=False)',
           "dense without the mirrored image"),
    Mutant(PROTOCOLS, "return (both[: len(images)] + both[len(images) :]) / 2",
           "return both[: len(images)]", "mirrored views computed, then dropped"),
    Mutant(PROTOCOLS, "return images[:, :, ::-1, :]", "return images[:, ::-1, :, :]",
           "vertical instead of horizontal mirror"),
    Mutant(PROTOCOLS, "int(round(offset))", "int(offset)", "grid offsets truncated"),
    Mutant(PROTOCOLS, "top, left = (height - crop) // 2, (width - crop) // 2",
           "top, left = (width - crop) // 2, (height - crop) // 2", "centre crop axes swapped"),
    Mutant(PROTOCOLS, "jax.nn.softmax(model.apply(variables, images, dense=dense), axis=-1)",
           "jax.nn.softmax(model.apply(variables, images, dense=dense), axis=0)",
           "softmax over the batch"),
    # Preprocessing (Sections 3.1 and 3.2).
    Mutant(PREPROCESSING, "return tf.image.resize(image, new_shape, antialias=True)",
           "return tf.image.resize(image, new_shape)", "test rescale without antialiasing"),
    Mutant(PREPROCESSING, "scale = tf.cast(size, tf.float32) / tf.reduce_min(shape)",
           "scale = tf.cast(size, tf.float32) / tf.reduce_max(shape)", "larger side to Q"),
    Mutant(PREPROCESSING, "new_shape = tf.cast(tf.round(shape * scale), tf.int32)",
           "new_shape = tf.cast(shape * scale, tf.int32)", "rescaled sides truncated"),
    Mutant(PREPROCESSING, "image = tf.image.resize(image, [self.crop, self.crop], antialias=True)",
           "image = tf.image.resize(image, [self.crop, self.crop])",
           "test crop resized without antialiasing"),
    Mutant(PREPROCESSING, "window = crop if scale is None else tf.round(crop * side / scale)",
           "window = crop if scale is None else tf.round(crop * scale / side)",
           "test window inverted"),
    Mutant(PREPROCESSING, "return tf.stack([(size[0] - window) // 2, (size[1] - window) // 2,",
           "return tf.stack([(size[1] - window) // 2, (size[0] - window) // 2,",
           "test window's axes swapped"),
    Mutant(PREPROCESSING, "alpha * tf.constant(IMAGENET_PCA_EIGENVALUES)",
           "alpha * tf.sqrt(tf.constant(IMAGENET_PCA_EIGENVALUES))", "PCA shift by sqrt(lambda)"),
    Mutant(PREPROCESSING, "tf.linalg.matvec(eigenvectors,", "tf.linalg.matvec(tf.transpose(eigenvectors),",
           "PCA eigenvectors as rows"),
    Mutant(PREPROCESSING, "tf.image.stateless_random_flip_left_right(image, seed)",
           "tf.image.stateless_random_flip_up_down(image, seed)", "vertical flips"),
    Mutant(PREPROCESSING, "return tf.cast(tf.round(image), tf.uint8)",
           "return tf.cast(image, tf.uint8)", "pixels truncated"),
    Mutant(PREPROCESSING, "minval=scale[0], maxval=scale[1] + 1, dtype=tf.int32\n        )\n        window",
           "minval=scale[0], maxval=scale[1], dtype=tf.int32\n        )\n        window",
           "S_max never drawn"),
    # Normalisation.
    Mutant(NORMALIZATION, 'return normalization(batch["image"], batch.get("lighting"))',
           'return normalization(batch["image"])', "model input without the PCA shift"),
    Mutant(NORMALIZATION, "images = images + lighting[..., None, None, :]",
           "images = images - lighting[..., None, None, :]", "PCA shift subtracted"),
    Mutant(NORMALIZATION, "return (images - jnp.asarray(self.mean)) / jnp.asarray(self.stddev)",
           "return images / jnp.asarray(self.stddev) - jnp.asarray(self.mean)",
           "mean subtracted after dividing"),
    Mutant(NORMALIZATION, "MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)",
           "MEAN_RGB = (0.406 * 255, 0.456 * 255, 0.485 * 255)", "ImageNet mean in BGR order"),
    Mutant(NORMALIZATION, "CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)",
           "CAFFE_MEAN_RGB = (103.939, 116.779, 123.68)", "Caffe mean in BGR order"),
]  # fmt: skip
