"""Loading the public CoCosNet v2 checkpoints: the converter's mapping and errors, and parity with
the public code's outputs stored in a small fixture (written by ``benchmarks/public_parity.py
--write-fixture``: public-format state dicts at small widths, uint8 inputs, the public outputs
computed in float64). The parity tests run our model in float64 too, so that convolution
rounding (~1e-15, whatever the processor or thread count) stays far below the tolerance and any
mapping error (~1e-1) stands out; every pixel of every map is compared."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cocosnet_ops
from cli import UsageError
from models import CoCosNet, CoCosNetOptions, generator_input, public_checkpoints
from models.alignment import NUM_LEVELS
from models.normalization import l2_normalize
from models.public_checkpoints import (
    CheckpointMismatchError,
    check,
    convert,
    load_public,
    read_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "public_cocosnet_v2_small.pt"
SIDE = 512  # the public level-0 warp's only size
TOLERANCE = 1e-10  # float64 rounding is ~1e-15


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def model(fixture) -> CoCosNet:
    return CoCosNet.from_public(fixture["corr"], fixture["G"], fixture["D"])


@pytest.fixture(scope="module")
def model_float64(fixture) -> CoCosNet:
    """The fixture's float16 weights are exact in float64."""
    return CoCosNet.from_public(fixture["corr"], fixture["G"], fixture["D"]).double()


def inputs(stored: dict, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixture's uint8 maps upsampled exactly (nearest) to ``size`` in float64, as the harness did."""

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t.double(), size=size, mode="nearest")

    return up(stored["label"]) / 255, up(stored["exemplar"]) / 127.5 - 1, up(stored["exemplar_label"]) / 255


def assert_matches(compared: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Every element of every (ours, public) pair within TOLERANCE; the failure names the largest
    difference and where it is (map, [batch, channel, row, column]), and every map over the tolerance."""
    largest = {}
    for name, (ours, theirs) in compared.items():
        assert ours.dtype == theirs.dtype == torch.float64, f"{name}: {ours.dtype} vs {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{name}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
        largest[name] = float((ours - theirs).abs().nan_to_num(nan=math.inf).max())
    over = [f"{name} {diff:.1e}" for name, diff in largest.items() if diff > TOLERANCE]
    if over:
        name = max(largest, key=largest.get)
        ours, theirs = compared[name]
        flat = int((ours - theirs).abs().nan_to_num(nan=math.inf).argmax())
        index = [int(i) for i in torch.unravel_index(torch.tensor(flat), ours.shape)]
        mine, public = float(ours.flatten()[flat]), float(theirs.flatten()[flat])
        pytest.fail(
            f"largest |ours - public| {largest[name]:.3e} at {name} {index} (ours {mine:.17g}, public "
            f"{public:.17g}); {len(over)} of {len(compared)} maps over {TOLERANCE:.0e}: {', '.join(over)}"
        )


def test_every_public_tensor_is_mapped_and_only_the_decoder_skipped(fixture, model):
    converted = convert(fixture["corr"], fixture["G"], fixture["D"])
    public_count = sum(len(fixture[k]) for k in ("corr", "G", "D"))
    decoder = {f"discriminator: {k}" for k in fixture["D"] if ".dec." in k}
    assert decoder and set(converted.skipped) == decoder
    assert len(converted.state_dict) == public_count - len(decoder)
    ours = {k for k in model.state_dict() if not k.startswith("vgg.")}
    assert set(converted.state_dict) == ours
    assert converted.options == {
        "nef": 4, "label_nc": 3, "match_nc": 4, "k": 16, "ngf": 2, "ndf": 4, "num_D": 2, "n_layers_D": 3,
    }  # fmt: skip
    spectral = "correspondence.alignment.label_unet.layer1.0.parametrizations.weight."
    public = "adaptive_model_seg.layer1.0.weight_"
    for ours_name, public_name in (("original", "orig"), ("0._u", "u"), ("0._v", "v")):
        assert torch.equal(converted.state_dict[spectral + ours_name], fixture["corr"][public + public_name])


def test_gru_offset_channels_swap_rows_and_columns(fixture):
    """Public offsets are (row, column), ours (x, y): the halves of the offset channels swap."""
    converted = convert(fixture["corr"], fixture["G"])
    head = fixture["corr"]["patch_match.refine_net.flow_head.conv2.weight"]
    ours = converted.state_dict["correspondence.update.head.conv2.weight"]
    assert torch.equal(ours[:16], head[16:]) and torch.equal(ours[16:], head[:16])
    gru = fixture["corr"]["patch_match.refine_net.gru.convz1.weight"]
    ours = converted.state_dict["correspondence.update.gru.convz1.weight"]
    assert torch.equal(ours[:, :64], gru[:, :64])
    assert torch.equal(ours[:, 64:80], gru[:, 80:]) and torch.equal(ours[:, 80:], gru[:, 64:80])


def test_alignment_features_match_the_public_code_at_every_level(fixture, model_float64):
    """Both U-Nets' normalised outputs and the matching features, every level in full, at a
    non-square size (the fixture's 64x96)."""
    run = fixture["alignment"]
    label, exemplar, exemplar_label = inputs(run["inputs"], run["size"])
    alignment = model_float64.correspondence.alignment
    caught = []  # the image U-Net's outputs, as the alignment's forward computes them
    hook = alignment.image_unet.register_forward_hook(lambda module, args, output: caught.append(output))
    with torch.no_grad():
        features = alignment(label, exemplar, exemplar_label)
    hook.remove()
    ours = {
        "label_features": features.label_features,
        "image_features": [l2_normalize(f) for f in caught[0]],
        "query": features.query,
        "key": features.key,
    }
    assert run["outputs"].keys() == ours.keys()
    compared = {}
    for quantity, levels in run["outputs"].items():
        assert len(levels) == NUM_LEVELS
        for level, theirs in enumerate(levels):
            compared[f"{quantity} level {level}"] = (ours[quantity][level], theirs)
    assert_matches(compared)


def test_dense_warp_matches_the_public_code(fixture, model):
    """Level 0 of the correspondence, the exact softmax over every pair, given the public level-0
    matching features at 512x512 (the only size of the public warp)."""
    run = fixture["at_512"]
    _, exemplar, _ = inputs(run["inputs"], (SIDE, SIDE))
    value = F.avg_pool2d(exemplar, 2 ** (NUM_LEVELS - 1))
    warp = cocosnet_ops.dense_warp(run["query"], run["key"], value, model.correspondence.temperature)
    assert_matches({"dense warp level 0": (warp, run["warp"])})


def test_generator_matches_the_public_code_given_the_same_warps(fixture, model_float64):
    """The public generator takes its conditioning at 512x512 (hard-coded) and made its 64x128
    output (crop_size 128, aspect_ratio 2) reading it only by nearest neighbour at power-of-two
    steps, i.e. every 8th row and 4th column: ours, which outputs its label's size, gets that label
    and resizes the warps itself."""
    run = fixture["at_512"]
    label, exemplar, _ = inputs(run["inputs"], (SIDE, SIDE))
    warps = [run["warp"], F.avg_pool2d(exemplar, 4), F.avg_pool2d(exemplar, 2), exemplar]
    rows, columns = (SIDE // side for side in run["image"].shape[-2:])
    with torch.no_grad():
        image = model_float64.generator(generator_input(label[..., ::rows, ::columns], warps))
    assert_matches({"generator output": (image, run["image"])})


def test_dataparallel_prefix_and_converted_file_load(fixture, model, tmp_path, capsys):
    wrapped = {"module." + k: v for k, v in fixture["corr"].items()}
    assert read_state_dict(wrapped).keys() == fixture["corr"].keys()
    paths = {key: tmp_path / f"latest_net_{key}.pth" for key in ("Corr", "G", "D")}
    torch.save(wrapped, paths["Corr"])
    torch.save(fixture["G"], paths["G"])
    torch.save(fixture["D"], paths["D"])
    out = tmp_path / "converted.pt"
    argv = ["--corr", str(paths["Corr"]), "--G", str(paths["G"]), "--D", str(paths["D"]), "--out", str(out)]
    assert public_checkpoints.main(argv) == 0
    assert "skipped discriminator: discriminator_0.dec." in capsys.readouterr().out
    for loaded in (CoCosNet.from_public(out), CoCosNet.from_public(paths["Corr"], paths["G"])):
        assert not loaded.training
        for network in ("correspondence", "generator"):
            mine, theirs = getattr(loaded, network).state_dict(), getattr(model, network).state_dict()
            assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(paths["G"].read_bytes()[:100])
    argv[3] = str(damaged)
    with pytest.raises(UsageError, match="generator '.*damaged.pth': cannot be read as tensors"):
        public_checkpoints.main(argv)


def test_every_mismatch_is_listed_in_one_error(fixture):
    corr = dict(fixture["corr"])
    del corr["theta_1.bias"]
    corr["phi_0.weight"] = torch.zeros(8, 3, 1, 1)
    converted = convert(corr, fixture["G"])
    converted.state_dict["generator.extra.weight"] = torch.zeros(1)
    model = CoCosNet(CoCosNetOptions(**converted.options))
    with pytest.raises(CheckpointMismatchError) as err:
        load_public(model, converted)
    message = str(err.value)
    assert "3 problems" in message
    assert "missing (not in the checkpoint): correspondence.alignment.query_proj.1.bias" in message
    assert "shape mismatch: correspondence.alignment.key_proj.0.weight" in message
    assert "unmapped (no such tensor here): generator.extra.weight" in message


def test_unknown_public_tensors_are_refused_by_name(fixture):
    corr = {**fixture["corr"], "vgg.conv1_1.weight": torch.zeros(1), "patch_match.extra": torch.zeros(1)}
    with pytest.raises(CheckpointMismatchError, match=r"2 public tensors(.|\n)*corr: vgg.conv1_1.weight"):
        convert(corr, fixture["G"])


def test_reference_mode_skips_the_gru(fixture):
    converted = convert(fixture["corr"], fixture["G"])
    model = CoCosNet(CoCosNetOptions(**converted.options, reference_mode=True))
    skipped = load_public(model, converted)
    assert "correspondence.update.gru.convz1.weight" in skipped
    check(model, converted)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_checkpoint_is_a_clear_error_naming_the_file(fixture, tmp_path, damage):
    path = tmp_path / "latest_net_Corr.pth"
    torch.save(fixture["corr"], path)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 64, "empty": b""}[damage]
    )
    with pytest.raises(ValueError, match=r"corr '.*latest_net_Corr\.pth': cannot be read"):
        CoCosNet.from_public(path, fixture["G"])


def test_bad_arguments_are_named(fixture, tmp_path):
    with pytest.raises(ValueError, match="corr .*no such file"):
        CoCosNet.from_public(tmp_path / "absent.pth", fixture["G"])
    with pytest.raises(ValueError, match="generator"):
        CoCosNet.from_public(fixture["corr"])
    with pytest.raises(TypeError, match="corr"):
        convert(42, fixture["G"])
    with pytest.raises(TypeError, match="options"):
        CoCosNet.from_public(fixture["corr"], fixture["G"], no_such_option=1)
    not_a_state_dict = tmp_path / "list.pth"
    torch.save([1, 2], not_a_state_dict)
    with pytest.raises(ValueError, match="generator .*expected a state dict"):
        convert(fixture["corr"], not_a_state_dict)
    with pytest.raises(CheckpointMismatchError, match="generator: not a public CoCosNet v2 generator"):
        convert(fixture["corr"], fixture["D"])
