"""Evaluating and predicting with trained models: `python -m vgg_jax.cli.evaluate` and
`python -m vgg_jax.cli.predict` on a small VGG-A trained here on the embedded digits, and the
paper's warm start through the trainer."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
from helpers import digits_config, flat_arrays
from sklearn.datasets import load_digits

from vgg_jax.cli import evaluate as evaluate_command
from vgg_jax.cli import predict as predict_command
from vgg_jax.evaluation import on_dataset, on_files
from vgg_jax.data import sources
from vgg_jax.evaluation import inference
from vgg_jax.evaluation.protocols import PROTOCOLS
from vgg_jax.model.vgg import create_model
from vgg_jax.training import warm_start
from vgg_jax.training.checkpoints import read_trained_variables
from vgg_jax.training.loop import TrainingError, train_and_evaluate
from vgg_jax.training.metrics import top_k_errors
from vgg_jax.training.sections import read_config
from vgg_jax.training.steps import init_training


@pytest.fixture(scope="module")
def trained(digits_dir, tmp_path_factory):
    """A 1/8-width VGG-A with batch norm, 3 epochs (132 steps, ~20 s) with a cosine schedule:
    98.3% top-1 on the digits' test split when measured; a checkpoint at each epoch's end."""
    workdir = tmp_path_factory.mktemp("digits_vgg11")
    config = digits_config(
        digits_dir, num_epochs=3, lr_schedule="cosine", learning_rate=0.1, warmup_epochs=1
    )
    summary = train_and_evaluate(config, workdir)
    assert summary["best_top1_accuracy"] > 0.95
    return workdir


def test_evaluation_names_and_counts_the_images_it_skips(trained, tmp_path, caplog):
    """As training does: the unreadable test images named on the console, not only in the
    report (the command's logging shows vgg_jax's warnings)."""
    from image_folders import BAD_FILES, make_folder

    builder = sources.get_builder(str(make_folder(tmp_path / "pets")))
    with caplog.at_level("WARNING", logger="vgg_jax"):
        report = on_dataset.evaluate(
            [inference.from_checkpoint(trained)], builder, "train", ["center"], scales=[32],
            batch_size=8, progress=False,
        )  # fmt: skip
    assert sorted(name.rsplit("/", 1)[-1] for name in report["skipped_images"]) == BAD_FILES
    warnings = [r.getMessage() for r in caplog.records if r.name == "vgg_jax"]
    assert len(warnings) == 1 and warnings[0].startswith(f"Skipped {len(BAD_FILES)} images of train")
    assert all(name in warnings[0] for name in report["skipped_images"])


def test_each_protocol_runs_end_to_end_and_scales_average_posteriors(trained, capsys):
    classifier = inference.from_checkpoint(trained)
    assert classifier.class_names == tuple(str(d) for d in range(10))
    builder = sources.get_builder("digits", classifier.data_dir)
    report = on_dataset.evaluate(
        [classifier], builder, "test[:48]", PROTOCOLS, scales=[32, 48], batch_size=16,
        progress=False, keep_posteriors=True,
    )  # fmt: skip
    assert report["examples"] == 48
    rows = {(r["protocol"], tuple(r["scales"])): r for r in report["results"]}
    assert set(rows) == {(p, s) for p in PROTOCOLS for s in [(32,), (48,), (32, 48)]}
    posteriors, labels = report["posteriors"], report["labels"]
    for (protocol, scales), row in rows.items():  # each error by hand from its posteriors
        scores = posteriors[classifier.name, protocol, scales]
        rank = np.sum(scores > scores[np.arange(len(labels)), labels][:, None], axis=1)
        assert row["top1_error"] == pytest.approx(100 * np.mean(rank >= 1))
        assert row["top5_error"] == pytest.approx(100 * np.mean(rank >= 5))
    for protocol in PROTOCOLS:  # at the training scale every protocol works (4.2% measured)
        assert rows[protocol, (32,)]["top1_error"] < 15 and rows[protocol, (32,)]["top5_error"] < 5
    # Trained at one scale, it fails at another (77% centre error at Q=48 when measured): the
    # paper's case for scale jittering.
    assert rows["center", (48,)]["top1_error"] > rows["center", (32,)]["top1_error"] + 30
    for protocol in PROTOCOLS:
        at = {
            scales: posteriors[classifier.name, protocol, scales]
            for scales in [(32,), (48,), (32, 48)]
        }
        np.testing.assert_allclose(at[32, 48], (at[32,] + at[48,]) / 2, rtol=1e-6)
        errors = top_k_errors(at[32, 48], labels)
        assert rows[protocol, (32, 48)]["top1_error"] == errors[1]
    print(on_dataset.format_table(report))
    assert "| dense+multi_crop | 32, 48 |" in capsys.readouterr().out


def test_an_ensemble_averages_its_members_posteriors(trained):
    """Two checkpoints of one run (after epochs 1 and 3): the ensemble's posteriors are the mean
    of theirs, not the softmax of their mean logits nor the first member's."""
    first, last = (inference.from_checkpoint(trained, step) for step in (44, 132))
    builder = sources.get_builder("digits", first.data_dir)
    report = on_dataset.evaluate(
        [first, last], builder, "test[:32]", ["dense"], [32], 16, progress=False,
        keep_posteriors=True,
    )  # fmt: skip
    posteriors = report["posteriors"]
    ours, theirs = (posteriors[c.name, "dense", (32,)] for c in (first, last))
    assert np.abs(ours - theirs).max() > 0.05  # two different members
    ensemble = posteriors["ensemble of 2", "dense", (32,)]
    np.testing.assert_allclose(ensemble, (ours + theirs) / 2, rtol=1e-5, atol=1e-7)
    row = report["results"][-1]
    assert row["model"] == "ensemble of 2"
    assert row["top1_error"] == top_k_errors(ensemble, report["labels"])[1]


def test_evaluate_command_writes_the_table_and_json(trained, tmp_path, capsys):
    output = tmp_path / "results.json"
    code = evaluate_command.main([
        f"--workdir={trained}", "--protocols=center,dense", "--scales=32",
        "--split=test[:32]", "--batch_size=8", f"--output={output}",
    ])  # fmt: skip
    assert code == 0
    report = json.loads(output.read_text())
    assert report["examples"] == 32 and len(report["results"]) == 2
    out = capsys.readouterr().out
    assert "| protocol | test scale Q | top-1 error (%) | top-5 error (%) |" in out
    assert not list(tmp_path.glob(".results.json.*"))  # no temporary file left behind


def test_evaluate_prints_the_table_even_when_the_results_cannot_be_written(
    trained, tmp_path, capsys
):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    code = evaluate_command.main([
        f"--workdir={trained}", "--protocols=center", "--scales=32", "--split=test[:8]",
        f"--output={blocked / 'evaluation.json'}",
    ])  # fmt: skip
    assert code == 1
    captured = capsys.readouterr()
    assert "| center | 32 |" in captured.out  # the evaluation is not lost
    assert f"error: could not write the results to {blocked}" in captured.err  # after tqdm
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model=vgg16_bn"], "configuration A with batch norm, not vgg16_bn (configuration D"),
        (["--model=vgg11"], "configuration A with batch norm, not vgg11 (configuration A)"),
        (["--checkpoint=7"], "No checkpoint at step 7"),
        (["--scales=16"], "smaller than the 32-pixel input"),
        (["--protocols=ten_crop"], "Unknown protocol"),
        (["--split=validation"], "has no split 'validation'"),
    ],
)
def test_evaluate_command_explains_bad_requests(trained, args, message, capsys):
    assert evaluate_command.main([f"--workdir={trained}", "--split=test[:8]", *args]) == 1
    assert message in capsys.readouterr().err


def test_evaluate_command_without_a_checkpoint_says_so(tmp_path, capsys):
    assert evaluate_command.main([f"--workdir={tmp_path / 'nothing'}"]) == 1
    assert "No checkpoints in" in capsys.readouterr().err


def write_digit_images(folder, count=3):
    """The last digits of scikit-learn's set as 32x32 RGB PNGs; returns (paths, labels)."""
    digits = load_digits()
    paths, labels = [], []
    for i in range(1, count + 1):
        pixels = np.kron(digits.images[-i], np.ones((4, 4))) * 255 / 16  # 8x8 -> 32x32
        pixels = np.repeat(pixels[..., None].astype(np.uint8), 3, axis=-1)
        path = folder / f"digit{i}.png"
        path.write_bytes(tf.io.encode_png(pixels).numpy())
        paths.append(path)
        labels.append(int(digits.target[-i]))
    return paths, labels


def test_predict_prints_the_top_classes_by_name(trained, tmp_path, capsys):
    paths, labels = write_digit_images(tmp_path, count=8)
    arguments = [*map(str, paths[:3]), f"--workdir={trained}", "--top=3", "--scale=32"]
    assert predict_command.main(arguments) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(paths[0]) and len(out) == 3 * 4
    printed = [float(line.split("%")[0].split()[-1]) for line in out[1:4]]
    assert out[1].endswith(f"  {labels[0]} ({labels[0]})")  # the digit, by its class name
    classifier = inference.from_checkpoint(trained)
    # The centre protocol by hand: at Q=32 the 32x32 image is its own centre crop. (By
    # default predict rescales to Q=37, torchvision's 256/224 ratio.)
    images = np.stack([tf.io.decode_png(path.read_bytes()).numpy() for path in paths])
    logits = classifier.model.apply(classifier.variables, classifier.preprocess(images))
    expected = np.asarray(jax.nn.softmax(logits))
    # The command printed the first image's three largest posteriors, in %, to 2 decimals.
    np.testing.assert_allclose(printed, 100 * np.sort(expected[0])[::-1][:3], atol=0.0051)
    top = on_files.predict(classifier, paths, scale=32, top=10)
    for classes, probabilities, label in zip(top, expected, labels, strict=True):
        by_index = {index: p for _, index, p in classes}
        np.testing.assert_allclose([by_index[i] for i in range(10)], probabilities, atol=1e-5)
        assert classes[0][1] == np.argmax(probabilities)
        assert [p for _, _, p in classes] == sorted(by_index.values(), reverse=True)
        assert all(name == str(index) for name, index, _ in classes)
    assert sum(classes[0][1] == label for classes, label in zip(top, labels)) >= 7
    for classes in on_files.predict(classifier, paths, dense=True, top=10):
        assert sorted(index for _, index, _ in classes) == list(range(10))
        assert sum(p for _, _, p in classes) == pytest.approx(1.0, abs=1e-5)


def test_predict_refuses_a_file_that_is_not_an_image(trained, tmp_path, capsys):
    paths, _ = write_digit_images(tmp_path, count=1)
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a picture")
    assert predict_command.main([str(paths[0]), str(fake), f"--workdir={trained}"]) == 1
    assert f"{fake} is not a JPEG or PNG image" in capsys.readouterr().err
    assert predict_command.main([str(tmp_path / "missing.png"), f"--workdir={trained}"]) == 1
    assert "No image file at" in capsys.readouterr().err


def test_warm_start_copies_the_papers_layers_and_leaves_the_rest_fresh(trained, tmp_path):
    """VGG-D started from the trained VGG-A: with a zero learning rate, the saved parameters
    are exactly the ones the warm start made."""
    source, _, _ = read_trained_variables(trained)
    config = digits_config(
        str(inference.from_checkpoint(trained).data_dir), model="vgg16_bn", learning_rate=0.0,
        max_steps=1, init_from=str(trained), init_layers="warm_start",
    )  # fmt: skip
    train_and_evaluate(config, tmp_path)
    result, _, step = read_trained_variables(tmp_path)
    assert step == 1
    sections = read_config(config)
    _, state = init_training(sections, sections.model.build(10), (32, 32, 3), 44)
    fresh = state.params
    copied = warm_start.warm_start_layers("A")
    assert copied == ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
    assert jax.tree.structure(result["params"]) == jax.tree.structure(fresh)
    theirs, new = flat_arrays(source["params"]), flat_arrays(fresh)
    for name, array in flat_arrays(result["params"]).items():
        layer = name.split("/")[0].removesuffix("_bn")  # a conv's BatchNorm goes with it
        expected = theirs[name] if layer in copied else new[name]
        np.testing.assert_array_equal(array, expected, err_msg=name)
    assert "Initialised from" in (tmp_path / "train.log").read_text()


def test_warm_start_from_a_missing_run_is_a_clear_error(digits_dir, tmp_path):
    config = digits_config(digits_dir, model="vgg13", init_from=str(tmp_path / "no_run"),
                           init_layers="warm_start")  # fmt: skip
    with pytest.raises(TrainingError, match="init_from=.*No checkpoints in"):
        train_and_evaluate(config, tmp_path / "work")


def _variables(name, fc_features=16):
    model = create_model(name, num_classes=10, width=1 / 16, fc_features=fc_features)
    return jax.device_get(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 32, 32, 3))))


def test_starting_points_must_fit_the_network():
    vgg11, vgg16 = _variables("vgg11"), _variables("vgg16")
    with pytest.raises(ValueError, match=r"only here \['conv1_2', 'conv2_2'"):
        warm_start.initial_variables(vgg16, vgg11, "vgg11", "all")
    wider_head = _variables("vgg11", fc_features=32)
    with pytest.raises(ValueError, match=r"fc6/bias has shape \(16,\) here but \(32,\)"):
        warm_start.initial_variables(vgg16, wider_head, "vgg11", "warm_start")
    same, layers = warm_start.initial_variables(vgg11, _variables("vgg11"), "vgg11", "all")
    assert set(layers) == set(vgg11["params"])
