"""The parts of train.py that need no training: configuration, sampler, schedule, atomic writes."""

from __future__ import annotations

import typing

import pytest
import torch

import train
from models import CoCosNetOptions
from training import checkpoint, visuals
from training.config import MODEL_EXCLUDED, RULES, TRAIN_DEFAULTS, TRAIN_TYPES, ConfigError, load_config
from training.distributed import ResumableSampler


def test_set_overrides_parse_yaml_values_and_name_bad_keys(tmp_path):
    config = load_config(None, ["train.lr=2e-4", "model.loss_weights.warp=0", "data.train.size=64"],
                         {"batch_size": 3})
    assert config["train"]["lr"] == 2e-4 and config["train"]["batch_size"] == 3
    assert config["model"]["loss_weights"] == {"warp": 0} and config["data"]["train"]["size"] == 64
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(None, ["train.lr=-1"])
    assert load_config(None, ["model={k: 4, nef: 8}"])["model"] == {"k": 4, "nef": 8}
    with pytest.raises(ConfigError, match="--set"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown sections"):
        load_config(None, ["lr=1"])
    with pytest.raises(ConfigError, match="unknown keys \\['not_a_key'\\]"):
        load_config(None, ["model.not_a_key=1"])
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "missing.yaml")


def test_every_setting_has_a_type_and_every_number_a_range():
    """So that a setting added later is checked too: the train section's types cover its
    defaults, and every number of the train and model sections has a range in RULES."""
    assert TRAIN_TYPES.keys() == TRAIN_DEFAULTS.keys()
    numbers = (int, float, int | None)
    model = typing.get_type_hints(CoCosNetOptions)
    unbounded = [f"train.{k}" for k, t in TRAIN_TYPES.items() if t in numbers and f"train.{k}" not in RULES]
    unbounded += [f"model.{k}" for k, t in model.items()
                  if t in numbers and k not in MODEL_EXCLUDED and f"model.{k}" not in RULES]
    assert not unbounded
    assert load_config(None)["train"] == TRAIN_DEFAULTS


def test_settings_are_checked_against_their_declared_types_and_ranges():
    for override, message in [
        ("model.k=abc", "model.k: expected an int, got 'abc'"),
        ("model.k=0", "model.k: expected an int >= 1, got 0"),
        ("model.k=2.5", "model.k: expected an int, got 2.5"),
        ("model.temperature=0", "model.temperature: expected a number > 0, got 0"),
        ("model.reference_mode=maybe", "model.reference_mode: expected true or false, got 'maybe'"),
        ("model.search_radius=-1", "model.search_radius: expected an int >= 0, got -1"),
        ("model.loss_weights=3", "model.loss_weights: expected a mapping or null, got 3"),
        ("model.gru_input_nc=8", "model.gru_input_nc: expected more than 2 * model.k = 32, got 8"),
        ("train.seed=-1", "train.seed: expected an int >= 0, got -1"),
        ("train.lr=.nan", "train.lr: expected a number, got nan"),
        ("train.max_steps=many", "train.max_steps: expected an int or null, got 'many'"),
        ("train.vgg_weights=3", "train.vgg_weights: expected a string or null, got 3"),
        ("data.train.size=[32, 32]", "data.train.size: expected an int, got [32, 32]"),
        ("data.name=imagenet",
         "data.name: expected one of ('synthetic', 'deepfashionhd', 'folder', 'synthetic_scenes')"),
        ("data.test={root: 3}", "data.test: unknown keys ['root']"),
    ]:
        with pytest.raises(ConfigError) as error:
            load_config(None, [override])
        assert str(error.value).startswith(message), (override, str(error.value))
    folder = load_config(None, ["data={name: folder, train: {root: a, label_nc: 3, size: [64, 32]}}"])
    assert folder["data"]["train"]["size"] == [64, 32]  # the folder dataset takes (H, W)
    with pytest.raises(ConfigError, match="data.train.size: expected an int or a list of 2 ints, got 'big'"):
        load_config(None, ["data={name: folder, train: {root: a, label_nc: 3, size: big}}"])


def test_dtype_and_compile_backend_are_checked():
    config = load_config(None, ["train.dtype=float64", "train.compile_backend=aot_eager"])
    assert config["train"]["dtype"] == "float64" and config["train"]["compile_backend"] == "aot_eager"
    assert load_config(None)["train"]["compile_backend"] == "inductor"
    with pytest.raises(ConfigError, match="train.dtype: expected one of"):
        load_config(None, ["train.dtype=float16"])
    with pytest.raises(ConfigError, match="train.amp: bf16 is half precision; with train.dtype float64"):
        load_config(None, ["train.dtype=float64", "train.amp=bf16"])
    with pytest.raises(ConfigError, match="train.compile_backend: expected one of .*'inductor'"):
        load_config(None, ["train.compile_backend=not_a_backend"])
    # auto never lowers a float64 model to half precision, on any device.
    for device in ("cpu", "cuda"):
        assert train.amp_dtype("auto", torch.device(device), torch.float64) is None


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_sampler_resumes_mid_epoch_with_any_number_of_processes(world_size):
    dataset = list(range(20))
    whole = list(ResumableSampler(dataset, 1, 0, seed=5))
    assert sorted(whole) == dataset
    taken = 8
    shares = []
    for rank in range(world_size):
        sampler = ResumableSampler(dataset, world_size, rank, seed=5)
        sampler.set_position(0, taken)
        shares.append(list(sampler))
        assert len(sampler) == len(shares[-1])
    # Interleaving the ranks' shares gives the rest of the one-process order.
    interleaved = [index for group in zip(*shares, strict=True) for index in group]
    assert interleaved == whole[taken:]
    with pytest.raises(ValueError, match="samples_taken"):
        ResumableSampler(dataset, 3, 0, seed=5).set_position(0, 4)


def test_learning_rate_is_constant_then_decays_linearly():
    factors = [train.learning_rate_factor(epoch, 2, 3) for epoch in range(6)]
    assert factors == pytest.approx([1, 1, 0.75, 0.5, 0.25, 0])


def test_seeded_items_repeat_and_leave_the_global_generators_alone():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3)

    items = train.SeededItems(Noisy(), seed=1)
    state = torch.get_rng_state()
    first = items[2]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(items[2], first) and not torch.equal(items[1], first)
    items.epoch = 1
    assert not torch.equal(items[2], first)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = checkpoint.checkpoint_path(tmp_path, 7)
    checkpoint.save_atomic({"format": checkpoint.FORMAT_VERSION, "step": 7}, path)

    def dies_half_way(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"format": checkpoint.FORMAT_VERSION, "step": 8}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_grid_has_a_column_per_picture():
    label = torch.zeros(2, 20, 16, 16)
    label[:, 0] = 1  # a red pose skeleton everywhere
    warps = [torch.zeros(2, 3, 16 // s, 16 // s) for s in (8, 4, 2, 1)]
    image = torch.ones(2, 3, 16, 16)
    grid = visuals.training_grid(label, -image, warps, image, image, "pose", samples=4)
    assert grid.shape == (3, 2 * 16, 8 * 16)
    assert torch.equal(grid[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(grid[:, 0, 16], torch.zeros(3))  # the exemplar, -1 in [-1, 1]
    segmentation = visuals.label_to_rgb(torch.eye(3).view(1, 3, 3, 1).expand(1, 3, 3, 2), "segmentation")
    assert segmentation.shape == (1, 3, 3, 2) and torch.equal(segmentation[0, :, 0, 0], torch.zeros(3))
