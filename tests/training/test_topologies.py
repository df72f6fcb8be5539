"""TPU slices by Cloud TPU's names and libtpu's, described by libtpu's compile-only devices."""

import pytest

from vgg_jax.training.topologies import TopologyError, libtpu_form, slice_shape, tpu_topology


@pytest.mark.parametrize(
    "name, libtpu_name",
    [("v5e-1", "v5e:1x1"), ("v5litepod-4", "v5e:2x2"), ("v5e-8", "v5e:2x4"),
     ("v5e-16", "v5e:4x4"), ("v6e-32", "v6e:4x8"), ("v2-8", "v2:2x2"), ("v3-32", "v3:4x4"),
     ("v4-8", "v4:2x2x1"), ("v4-16", "v4:2x2x2"), ("v4-32", "v4:2x2x4"), ("v5p-128", "v5p:4x4x4"),
     ("v5e:2x2", "v5e:2x2"), ("v4:2x2x2", "v4:2x2x2")],
)  # fmt: skip
def test_cloud_names_become_libtpu_shapes(name, libtpu_name):
    assert libtpu_form(name)[0] == libtpu_name


def test_slices_grow_one_axis_at_a_time():
    assert [slice_shape(chips, 3) for chips in (4, 8, 16, 32, 64, 128)] == [
        (2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8),
    ]  # fmt: skip
    assert [slice_shape(chips, 2) for chips in (1, 4, 8, 16, 32, 256)] == [
        (1, 1), (2, 2), (2, 4), (4, 4), (4, 8), (16, 16),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name, chips, devices, hosts, chip",
    [("v5e-16", 16, 16, 4, "TPU v5e"), ("v5e-8", 8, 8, 1, "TPU v5e"), ("v4-8", 4, 4, 1, "TPU v4"),
     ("v3-8", 4, 8, 1, "TPU v3"), ("v5p-8", 4, 4, 1, "TPU v5p"), ("v6e:2x2", 4, 4, 1, "TPU v6e")],
)  # fmt: skip
def test_libtpu_describes_the_slices_chips_devices_and_hosts(name, chips, devices, hosts, chip):
    topology = tpu_topology(name)
    assert (topology.chips, len(topology.devices), topology.hosts) == (chips, devices, hosts)
    assert topology.chip.name == chip
    assert all(device.platform == "tpu" for device in topology.devices)


@pytest.mark.parametrize(
    "name, words",
    [("v5litepod", "Unknown topology 'v5litepod'"), ("v5e-12", "power of two"),
     ("v4-7", "power of two"), ("v7x-8", "v5e-16, v5litepod-16"),
     ("v5e:3x3", "libtpu does not know the topology 'v5e:3x3'")],
)  # fmt: skip
def test_names_that_name_no_slice_are_refused_with_examples(name, words):
    with pytest.raises(TopologyError, match="v5e:4x4") as error:
        tpu_topology(name)
    assert words in str(error.value)


def test_without_libtpu_the_extra_to_install_is_named(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "libtpu" else find_spec(name, *a),
    )
    with pytest.raises(TopologyError, match=r'needs libtpu: pip install "vgg_jax\[tpu\]"'):
        tpu_topology("v5e-4")
