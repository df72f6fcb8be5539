"""Starting a run of the training loop (vgg_jax.training.loop): the config checked against this
run's devices, then the data, the model, the optimiser and the train state, resumed from the
newest readable checkpoint, started from another run (config.init_from), or fresh. `Run` is
what stays fixed while the loop runs, `Position` where it stands.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax

from vgg_jax.data import pipeline, sources
from vgg_jax.files import write_atomically
from vgg_jax.model.costs import training_flops_per_image
from vgg_jax.model.dtypes import dtype_choice
from vgg_jax.parallel import replicate
from vgg_jax.training import warm_start
from vgg_jax.training.accelerators import peak_bf16_flops
from vgg_jax.training.checkpoints import (
    UNREADABLE_FOLDER,
    CheckpointNotFound,
    Checkpoints,
    read_trained_variables,
)
from vgg_jax.training.reports import (
    TrainingError,
    TrainLog,
    logger,
)
from vgg_jax.training.sections import (
    ConfigError,
    RunSection,
    TrainingConfig,
    check_for_devices,
    read_config,
    read_saved_config,
)
from vgg_jax.training.steps import init_training, model_variables, pmapped_steps
from vgg_jax.training.workdir import (
    finished_step,
    refusal_to_forget_a_run,
)

# A checkpoint can only be resumed by a run that builds the same network on the same data.
ARCHITECTURE_KEYS = ("model", "width", "fc_features", "init_scheme", "dataset", "crop_size")


def validate_config(config) -> TrainingConfig:
    """The config read into its sections (vgg_jax.training.sections), or a TrainingError before
    any data is read or anything compiled: for any field that cannot work, then for what
    depends on this run's devices: the batch's split over them and into micro-batches, and
    the dtype. A config read before (train.py's) is not checked field by field again."""
    try:
        config = read_config(config)
    except ConfigError as error:
        raise TrainingError(str(error)) from None
    try:
        pipeline.local_batch_size(config.optimizer.batch_size)
    except ValueError as error:
        raise TrainingError(f"config.{error}") from None
    try:
        check_for_devices(config, jax.device_count(), jax.default_backend())
    except ConfigError as error:
        raise TrainingError(str(error)) from None
    init_from = config.run.init_from
    if init_from and warm_start.names_published_weights(init_from):
        try:
            warm_start.check_published_weights(init_from, config.model.model)
        except ValueError as error:
            raise TrainingError(f"config.init_from={init_from!r}: {error}") from None
    return config


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """What a run's data are, fixed when it starts: the data set, the images the model sees,
    their preprocessing, and the steps they make."""

    builder: Any
    info: sources.DatasetInfo
    input_shape: tuple[int, int, int]
    augmentation: Any  # preprocessing.TrainAugmentation
    eval_preprocessing: Any  # preprocessing.EvalPreprocessing
    steps_per_epoch: int
    total_steps: int


def plan_data(config: TrainingConfig) -> DataPlan:
    """The data set as configured, described; a TrainingError if it cannot be read."""
    data = config.data
    try:
        builder = sources.get_builder(data.dataset, data.data_dir or None)
        info = sources.describe(builder, data.train_split, data.eval_split)
        input_shape = pipeline.model_input_shape(data, info)
        augmentation = pipeline.augmentation_from_config(data)
        eval_preprocessing = pipeline.eval_preprocessing_from_config(data)
        steps_per_epoch = pipeline.steps_per_epoch(info.train_examples, config.optimizer.batch_size)
    except ValueError as error:  # the data set, as configured, cannot be read
        raise TrainingError(str(error)) from None
    total_steps = config.schedule.num_epochs * steps_per_epoch
    if config.schedule.max_steps:
        total_steps = min(total_steps, config.schedule.max_steps)
    return DataPlan(
        builder, info, input_shape, augmentation, eval_preprocessing, steps_per_epoch, total_steps
    )


@dataclasses.dataclass(frozen=True)
class Run:
    """What a run fixes once it is set up: its sections, data plan, steps and the places it
    writes to. What changes as it trains is the train state (a replicated pytree, with the
    plateau state in it) and the host's Position."""

    config: TrainingConfig
    workdir: pathlib.Path
    started: float
    is_main: bool
    plan: DataPlan
    setup: Any  # steps.TrainingSetup
    checkpoints: Checkpoints
    writer: Any  # TensorBoard's, in process 0 only
    train_log: TrainLog
    skipped: pipeline.SkippedImages  # every file the pipeline left out, as it meets them
    eval_step: Any  # pmapped


@dataclasses.dataclass(frozen=True)
class Position:
    """Where the run stands, on the host: the last step taken, the best evaluation so far, and
    the train step to call (pmapped; in one process, its executable once compiled)."""

    step: int
    best: dict | None
    train_step: Any
    compiled: bool = False


def set_up(
    config: TrainingConfig, workdir: pathlib.Path, started: float, opened: dict
) -> tuple[Run, Any, Position]:
    """(run, replicated train state, position): data, model, optimiser and state, resumed from
    the newest readable checkpoint, or started from another run (config.init_from), or fresh.
    What needs closing goes into `opened` ("checkpoints", "writer") as soon as it is open."""
    is_main = jax.process_index() == 0
    plan = plan_data(config)
    model = config.model.build(plan.info.num_classes)
    setup, state = init_training(config, model, plan.input_shape, plan.steps_per_epoch)
    state = jax.device_get(state)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=config.run.keep_checkpoints)
    opened["checkpoints"] = checkpoints
    state, record = resumed_or_initial_state(config, workdir, checkpoints, state)
    writer = None
    if is_main:
        write_atomically(workdir / "config.json", config.to_json())
        from flax.metrics import tensorboard  # imports TensorBoard: only where it writes

        writer = tensorboard.SummaryWriter(str(workdir / "tensorboard"))
        opened["writer"] = writer
    logger.info(
        "%s on %s: %d train / %d eval examples, %d classes, %s images; %d steps per "
        "epoch, %d devices.",
        config.model.model, plan.info.name, plan.info.train_examples, plan.info.eval_examples,
        plan.info.num_classes, "x".join(map(str, plan.input_shape)), plan.steps_per_epoch,
        jax.device_count(),
    )  # fmt: skip
    logger.info("%s", dtype_choice(config.model.dtype))
    train_step, eval_step = pmapped_steps(setup)
    peak = peak_bf16_flops(jax.devices()[0].device_kind)
    train_log = TrainLog(
        writer, config.optimizer.batch_size, checkpoints,
        flops_per_image=training_flops_per_image(model, plan.input_shape),
        peak_flops=peak * jax.device_count() if peak else None, started=started,
    )  # fmt: skip
    skipped = pipeline.SkippedImages(record.get("skipped_images", ()))
    run = Run(
        config, workdir, started, is_main, plan, setup, checkpoints, writer, train_log, skipped,
        eval_step,
    )  # fmt: skip
    return run, replicate(state), Position(int(state.step), record.get("best"), train_step)


def resumed_or_initial_state(
    config: TrainingConfig, workdir: pathlib.Path, checkpoints: Checkpoints, state
) -> tuple[Any, dict]:
    """(state, the checkpoint's record) of the newest readable checkpoint; else `state` as
    config.init_from makes it, with an empty record. Refuses to start over where a run's
    checkpoints were set aside or the run already finished."""
    restored = checkpoints.restore_latest(
        state, lambda saved: check_same_architecture(config, checkpoints, saved)
    )
    if restored is not None:
        logger.info("Resumed from step %d in %s.", int(restored[0].step), checkpoints.directory)
        return restored
    if checkpoints.set_aside_steps():
        raise TrainingError(refusal_to_start_over(checkpoints))
    if finished := finished_step(workdir):
        raise TrainingError(refusal_to_forget_a_run(workdir, finished))
    if config.run.init_from and warm_start.names_published_weights(config.run.init_from):
        state = start_from_weights(config, state)
    elif config.run.init_from:
        state = start_from_run(config.run, state)
    return state, {"best": None}


def refusal_to_start_over(checkpoints: Checkpoints) -> str:
    aside = checkpoints.directory.parent / UNREADABLE_FOLDER
    steps = ", ".join(map(str, checkpoints.set_aside_steps()))
    return (
        f"No readable checkpoint in {checkpoints.directory}: the unreadable ones (steps "
        f"{steps}) are in {aside}. Training does not start over on its own; to start from "
        f"step 0 on purpose, delete {aside}, or use another --workdir."
    )


def check_same_architecture(
    config: TrainingConfig, checkpoints: Checkpoints, record: dict
) -> None:
    saved, fields = record.get("config", {}), config.fields
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, this run {fields[key]!r}"
        for key in ARCHITECTURE_KEYS
        if saved.get(key) != fields[key]
    ]
    if differences:
        raise TrainingError(
            f"{checkpoints.directory} holds checkpoints of another configuration ("
            + "; ".join(differences)
            + "). Use another --workdir, or delete that folder to start over."
        )
    # "auto" is resolved from config.init_from, which may name nothing any more on a resume.
    trained_with = read_saved_config(saved).data.normalization
    if trained_with != fields["normalization"]:
        raise TrainingError(
            f"{checkpoints.directory} holds checkpoints trained on images normalised as "
            f"{trained_with!r}, but this run's config.normalization is "
            f"{fields['normalization']!r} (config.init_from={fields['init_from']!r}): pass "
            f"--config.normalization={trained_with} to resume it."
        )


def start_from_weights(config: TrainingConfig, state):
    """`state` with published weights copied in (warm_start): every layer, but a fresh
    classifier where the data's class count differs from the weights'; with init_layers
    "warm_start", the paper's layers of net A."""
    init_from = config.run.init_from
    try:
        source = warm_start.published_variables(init_from, config.model.model)
        variables = model_variables(state)
        if config.run.init_layers == "all":
            variables, layers, fresh_head = warm_start.fine_tuning_variables(variables, source)
        else:
            variables, layers = warm_start.initial_variables(
                variables, source, config.model.model, config.run.init_layers
            )
            fresh_head = False
    except (FileNotFoundError, ValueError) as error:  # ConversionError is a ValueError
        raise TrainingError(f"config.init_from={init_from!r}: {error}") from None
    logger.info(
        "Initialised from %s: copied %s%s.", init_from, ", ".join(layers),
        "; the classifier (fc8) starts fresh, sized for this data set's classes"
        if fresh_head else "",
    )  # fmt: skip
    return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))


def start_from_run(config: RunSection, state):
    """`state` with layers of config.init_from's latest checkpoint copied in (warm_start):
    every layer for fine-tuning, or the paper's warm start from net A."""
    try:
        source, source_config, step = read_trained_variables(config.init_from)
        variables = model_variables(state)
        variables, layers = warm_start.initial_variables(
            variables, source, source_config.get("model", "?"), config.init_layers
        )
    except (CheckpointNotFound, ValueError) as error:
        raise TrainingError(
            f"config.init_from={config.init_from!r}: {error} (set --config.init_from='' to "
            f"start from random weights)."
        ) from None
    logger.info(
        "Initialised from %s (step %d, %s): copied %s%s.",
        config.init_from, step, source_config.get("model"), ", ".join(layers),
        "; the other layers start random" if config.init_layers == "warm_start" else "",
    )  # fmt: skip
    return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))
