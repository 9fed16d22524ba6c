"""Loading the public CoCosNet v2 checkpoints: the converter's mapping and errors, and parity with
the public code's outputs stored in a small fixture (written by ``benchmarks/public_parity.py
--write-fixture``: public-format state dicts at small widths, inputs, the public outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import cocosnet_ops
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
SIDE = 512


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=True)


@pytest.fixture(scope="module")
def model(fixture) -> CoCosNet:
    return CoCosNet.from_public(fixture["corr"], fixture["G"], fixture["D"])


def inputs(stored: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixture's uint8 maps upsampled exactly (nearest) to 512x512, as the harness made them."""

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t.float(), size=(SIDE, SIDE), mode="nearest")

    return up(stored["label"]) / 255, up(stored["exemplar"]) / 127.5 - 1, up(stored["exemplar_label"]) / 255


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


def test_alignment_features_and_dense_warp_match_the_public_code(fixture, model):
    label, exemplar, exemplar_label = inputs(fixture["inputs"])
    alignment = model.correspondence.alignment
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
        for quantity, levels in fixture["outputs"].items():
            assert len(levels) == NUM_LEVELS
            for level, (theirs, stride) in enumerate(zip(levels, fixture["strides"], strict=True)):
                mine = ours[quantity][level][..., ::stride, ::stride]
                torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5, msg=f"{quantity} level {level}")
        # Level 0 of the correspondence's forward: the exact softmax over every pair.
        warp = cocosnet_ops.dense_warp(
            features.query[0], features.key[0], F.avg_pool2d(exemplar, 8), model.options.temperature
        )
    torch.testing.assert_close(warp, fixture["warp0"], rtol=0, atol=1e-5)


def test_generator_matches_the_public_code_given_the_same_warps(fixture, model):
    label, exemplar, _ = inputs(fixture["inputs"])
    warps = [fixture["warp0"], F.avg_pool2d(exemplar, 4), F.avg_pool2d(exemplar, 2), exemplar]
    with torch.no_grad():
        image = model.generator(generator_input(label, warps))
    stride = fixture["image_stride"]
    torch.testing.assert_close(image[..., ::stride, ::stride], fixture["image"], rtol=0, atol=1e-4)


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
    assert public_checkpoints.main(argv) == 1
    assert "damaged.pth" in capsys.readouterr().err


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
