"""The training loop behind train.py: train_and_evaluate(config, workdir).

It resumes from the newest readable checkpoint in `workdir`, trains with the pmapped steps of
vgg_jax.training, evaluates at the end of every epoch, and saves every
`checkpoint_every_steps` steps and after every evaluation. Ctrl-C or SIGTERM finish the
current step, save, and return; a loss or parameter that turns NaN stops the run before it can
reach a checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import pathlib
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vgg_jax import input_pipeline, optim, warm_start
from vgg_jax.checkpoints import CheckpointNotFound, Checkpoints, read_trained_variables
from vgg_jax.architectures import resolve_model_name
from vgg_jax.models import VGG
from vgg_jax.run_reports import (
    TrainingError,
    TrainLog,
    disk_full_message,
    is_disk_full,
    logger,
    nan_message,
    report_evaluation,
    report_skipped,
    setup_logging,
    write_summary,
)
from vgg_jax.summary import peak_bf16_flops, training_flops_per_image
from vgg_jax.training import (
    create_train_state,
    model_for_training,
    pmapped_steps,
    replicate,
    unreplicate,
)

# A checkpoint can only be resumed by a run that builds the same network on the same data.
ARCHITECTURE_KEYS = (
    "model", "width", "fc_features", "batch_norm", "init_scheme", "dataset", "crop_size",
)  # fmt: skip
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """bfloat16 compute on GPU/TPU and float32 on CPU for "auto"; float32 parameters always."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    if name not in DTYPES:
        raise TrainingError(f"Unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


def validate_config(config) -> None:
    """Rejects a config that cannot work, before any data is read or anything compiled."""
    if config.lr_schedule not in optim.SCHEDULES:
        raise TrainingError(
            f"Unknown lr_schedule {config.lr_schedule!r}; choose one of "
            f"{', '.join(optim.SCHEDULES)}."
        )
    for key in ("batch_size", "num_epochs", "log_every_steps", "checkpoint_every_steps"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise TrainingError(f"config.{key} must be a positive integer, got {config[key]!r}.")
    try:
        input_pipeline.local_batch_size(config.batch_size)
    except ValueError as error:
        raise TrainingError(f"config.{error}") from None
    compute_dtype(config.dtype)
    if config.init_layers not in warm_start.INIT_LAYERS:
        raise TrainingError(
            f"Unknown init_layers {config.init_layers!r}; choose one of "
            f"{', '.join(warm_start.INIT_LAYERS)}."
        )


def build_model(config, num_classes: int) -> VGG:
    """The config's network; batch norm if the model name says so ("vgg16_bn") or the config."""
    paper_config, named_batch_norm = resolve_model_name(config.model)
    return VGG(
        config=paper_config,
        num_classes=num_classes,
        width=config.width,
        fc_features=config.fc_features,
        dropout_rate=config.dropout_rate,
        batch_norm=named_batch_norm or config.batch_norm,
        init_scheme=config.init_scheme,
        dtype=compute_dtype(config.dtype),
    )


def check_same_architecture(record: dict, config, directory: pathlib.Path) -> None:
    saved = record.get("config", {})
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, this run {config[key]!r}"
        for key in ARCHITECTURE_KEYS
        if saved.get(key) != config[key]
    ]
    if differences:
        raise TrainingError(
            f"{directory} holds checkpoints of another configuration ("
            + "; ".join(differences)
            + "). Use another --workdir, or delete that folder to start over."
        )


@contextlib.contextmanager
def stop_requests():
    """Turns SIGINT/SIGTERM into a request to stop after the current step (a second one
    interrupts at once). Yields a dict whose "signal" is set when a stop was asked for."""
    request: dict[str, Any] = {"signal": None}

    def handler(signum, frame):
        if request["signal"] is not None:
            raise KeyboardInterrupt
        request["signal"] = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint after this step.", request["signal"])

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        previous = {}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def evaluate(
    p_eval_step,
    state,
    builder,
    split: str,
    batch_size: int,
    preprocessing,
    skipped=None,
    image_shape=None,
) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy over every readable example of `split`."""
    totals = None
    batches = input_pipeline.eval_batches(
        builder, split, batch_size, preprocessing, skipped=skipped, image_shape=image_shape
    )
    for batch in batches:
        sums = p_eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = unreplicate(totals)
    count = totals["count"]
    return {
        "loss": float(totals["loss"] / count),
        "top1_accuracy": float(totals["top1_correct"] / count),
        "top5_accuracy": float(totals["top5_correct"] / count),
    }


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict:
    """Trains `config` in `workdir`, resuming from its checkpoints; returns a summary."""
    started = time.time()
    validate_config(config)
    workdir = pathlib.Path(workdir).absolute()
    is_main = jax.process_index() == 0
    workdir.mkdir(parents=True, exist_ok=True)
    log_handlers = setup_logging(workdir, is_main)
    writer = None
    checkpoints = None
    failed = False
    try:
        try:
            builder = input_pipeline.get_builder(config.dataset, config.data_dir or None)
            info = input_pipeline.describe(builder, config.train_split, config.eval_split)
            input_shape = input_pipeline.model_input_shape(config, info)
            augmentation = input_pipeline.augmentation_from_config(config)
            eval_preprocessing = input_pipeline.eval_preprocessing_from_config(config)
            steps_per_epoch = input_pipeline.steps_per_epoch(info.train_examples, config.batch_size)
        except ValueError as error:  # the data set, as configured, cannot be read
            raise TrainingError(str(error)) from None
        skipped = input_pipeline.SkippedImages()
        skipped_total = 0
        total_steps = config.num_epochs * steps_per_epoch
        if config.max_steps:
            total_steps = min(total_steps, config.max_steps)

        model = model_for_training(build_model(config, info.num_classes))
        tx = optim.make_optimizer(config, steps_per_epoch)
        schedule = optim.learning_rate_schedule(config, steps_per_epoch)
        state = jax.device_get(
            create_train_state(model, tx, optim.init_plateau(config), input_shape, config.seed)
        )

        checkpoints = Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
        record: dict[str, Any] = {"best": None}
        restored = checkpoints.restore_latest(
            state, lambda saved: check_same_architecture(saved, config, checkpoints.directory)
        )
        if restored is not None:
            state, record = restored
            logger.info("Resumed from step %d in %s.", int(state.step), checkpoints.directory)
        elif config.init_from:
            state = start_from_run(config, state)
        step = int(state.step)
        if is_main:
            (workdir / "config.json").write_text(config.to_json(indent=2))
            from flax.metrics import tensorboard  # imports TensorBoard: only where it writes

            writer = tensorboard.SummaryWriter(str(workdir / "tensorboard"))
        logger.info(
            "%s on %s: %d train / %d eval examples, %d classes, %s images; %d steps per "
            "epoch, %d devices, %s compute.",
            config.model, info.name, info.train_examples, info.eval_examples,
            info.num_classes, "x".join(map(str, input_shape)), steps_per_epoch,
            jax.device_count(), jnp.dtype(model.dtype).name,
        )  # fmt: skip

        p_train_step, p_eval_step = pmapped_steps(model, tx)
        replicated = replicate(state)
        peak = peak_bf16_flops(jax.devices()[0].device_kind)
        train_log = TrainLog(
            writer, config.batch_size, checkpoints,
            flops_per_image=training_flops_per_image(model, input_shape),
            peak_flops=peak * jax.device_count() if peak else None, started=started,
        )  # fmt: skip

        def log_train_metrics() -> None:
            learning_rate = optim.learning_rate_at(schedule, step - 1, replicated)
            summary = train_log.flush(step, learning_rate)
            if summary is not None:
                progress.set_postfix(
                    loss=f"{summary['loss']:.4f}", img_s=f"{summary['images_per_second']:.0f}"
                )

        def save(metrics: dict | None = None) -> None:
            log_train_metrics()  # refuses a NaN loss before anything is written
            host_state = unreplicate(replicated)
            if not all(np.all(np.isfinite(p)) for p in jax.tree.leaves(host_state.params)):
                raise TrainingError(nan_message(step, checkpoints))
            record.update(config=config.to_dict(), step=step, metrics=metrics)
            checkpoints.save(step, host_state, record, metrics)
            train_log.restart_clock()

        with stop_requests() as stop:
            while step < total_steps and stop["signal"] is None:
                epoch, skip = divmod(step, steps_per_epoch)
                epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
                batches = input_pipeline.train_batches(
                    builder, config.train_split, config.batch_size, epoch, config.seed,
                    skip_batches=skip, shuffle_buffer_size=config.shuffle_buffer_size,
                    augmentation=augmentation, skipped=skipped,
                )  # fmt: skip
                progress = tqdm(
                    total=steps_per_epoch, initial=skip, unit="step", disable=not is_main,
                    desc=f"epoch {epoch + 1}/{config.num_epochs}", dynamic_ncols=True,
                )  # fmt: skip
                device_batches = flax.jax_utils.prefetch_to_device(
                    itertools.islice(batches, epoch_end - step), 2
                )
                train_log.restart_clock()
                for batch in device_batches:
                    replicated, metrics = p_train_step(replicated, batch)
                    step += 1
                    train_log.add(metrics)
                    progress.update()
                    if step % config.log_every_steps == 0 or step == epoch_end:
                        log_train_metrics()
                    if stop["signal"] is not None:
                        break
                    if step % config.checkpoint_every_steps == 0 and step != epoch_end:
                        save()
                progress.close()
                if step < epoch_end and stop["signal"] is None:
                    raise TrainingError(
                        f"Epoch {epoch + 1} ended after step {step} of {epoch_end}: most of "
                        f"{config.train_split!r} could not be read (see the skipped files above)."
                    )
                if step % steps_per_epoch == 0 and stop["signal"] is None:
                    skipped_total += report_skipped(skipped, f"epoch {epoch + 1} (training)")
                    metrics = evaluate(
                        p_eval_step, replicated, builder, config.eval_split, config.batch_size,
                        eval_preprocessing, skipped, input_shape,
                    )  # fmt: skip
                    skipped_total += report_skipped(skipped, f"epoch {epoch + 1} (evaluation)")
                    replicated = _after_evaluation(config, replicated, metrics)
                    if record["best"] is None or (
                        metrics["top1_accuracy"] > record["best"]["top1_accuracy"]
                    ):
                        record["best"] = {**metrics, "step": step}
                    report_evaluation(writer, step, epoch, metrics, replicated, schedule)
                    save(metrics)
                elif step == total_steps or stop["signal"] is not None:
                    save()
        checkpoints.wait()
        skipped_total += report_skipped(skipped, "the last steps")
        return write_summary(
            record, step, total_steps, stop["signal"], started, workdir, skipped_total,
            first_step_seconds=train_log.first_step_seconds,
        )  # fmt: skip
    except Exception as error:
        failed = True
        if is_disk_full(error):
            raise TrainingError(disk_full_message(workdir, checkpoints, error)) from None
        raise
    finally:
        for closable in (checkpoints, writer):
            try:
                if closable is not None:
                    closable.close()
            except Exception as error:  # a full disk fails these too: report the first error
                if not failed:
                    raise
                logger.warning("While stopping: %s: %s", type(error).__name__, error)
        for handler in log_handlers:
            logger.removeHandler(handler)
            handler.close()


def start_from_run(config, state):
    """`state` with layers of config.init_from's latest checkpoint copied in (vgg_jax.warm_start):
    every layer for fine-tuning, or the paper's warm start from net A."""
    try:
        source, source_config, step = read_trained_variables(config.init_from)
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        variables, layers = warm_start.initial_variables(
            variables, source, source_config.get("model", "?"), config.init_layers
        )
    except (CheckpointNotFound, ValueError) as error:
        raise TrainingError(
            f"config.init_from={config.init_from!r}: {error} (set --config.init_from='' to "
            f"start from random weights)."
        ) from None
    logger.info(
        "Initialised from %s (step %d, %s): copied %s; the other layers start random.",
        config.init_from, step, source_config.get("model"), ", ".join(layers),
    )  # fmt: skip
    return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))


def _after_evaluation(config, replicated, metrics: dict):
    """The paper's schedule: one plateau step per evaluation, fed the top-1 error."""
    if config.lr_schedule != "paper":
        return replicated
    plateau = unreplicate(replicated.plateau)
    new_plateau = optim.update_plateau(config, plateau, 1.0 - metrics["top1_accuracy"])
    if float(new_plateau.scale) < float(plateau.scale):
        logger.info("Validation accuracy stopped improving: learning rate divided by 10.")
    return replicated.replace(plateau=replicate(new_plateau))
