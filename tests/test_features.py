"""Patch grid, coarse labels, encoders and batched feature extraction."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
from shapely.geometry import box

from protorefine.annotations.model import Annotation, AnnotationSet
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features import (
    PatchGrid,
    coarse_labels,
    extract_features,
    get_encoder,
    list_encoders,
    make_grid,
    resolve_device,
)
from protorefine.features.encoders import efficientnet_lite0_weights
from protorefine.features.extract import read_level, read_patches
from protorefine.slides import Slide


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the test machine is shared, and 2-thread OpenMP stalls under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tissue_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """H&E-like random texture (pink stroma with purple dots)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[..., 0] = rng.integers(170, 230, (h, w))
    img[..., 1] = rng.integers(80, 140, (h, w))
    img[..., 2] = rng.integers(150, 210, (h, w))
    dots = rng.random((h, w)) < 0.1
    img[dots] = (70, 40, 130)
    return img


def _two_level_slide(h: int = 400, w: int = 600, chunk: int = 48) -> Slide:
    """A 2-level slide (downsample 4) of random tissue with small chunks, mpp 0.5."""
    img = _tissue_image(h, w)
    small = img.reshape(h // 4, 4, w // 4, 4, 3).mean((1, 3)).astype(np.uint8)
    levels = [
        da.from_array(img, chunks=(chunk, chunk, 3)),
        da.from_array(small, chunks=(32, 32, 3)),
    ]
    return Slide(path=Path("two.tif"), name="two", levels=levels, mpp=0.5, backend="array")


# ---- grid -----------------------------------------------------------------------------


def test_grid_level0_geometry() -> None:
    slide = Slide.from_array(_tissue_image(300, 500), mpp=0.25)
    grid = make_grid(slide, patch_size=64, tissue=True)
    assert (grid.level, grid.rows, grid.cols, grid.downsample) == (0, 5, 8, 64.0)
    assert grid.n == 40 and grid.tissue.all()
    assert grid.rc[9].tolist() == [1, 1] and grid.yx[9].tolist() == [64, 64]
    assert grid.yx[-1].tolist() == [256, 448]  # last patch overhangs the slide edge
    assert grid.mpp == pytest.approx(0.25)


def test_grid_level1_and_stride() -> None:
    slide = _two_level_slide()
    grid = make_grid(slide, patch_size=32, level=1, tissue=True)
    assert (grid.level, grid.read_size, grid.downsample) == (1, 32, 128.0)
    assert (grid.rows, grid.cols) == (4, 5)  # ceil(400/128), ceil(600/128)
    assert grid.yx[6].tolist() == [128, 128]
    assert grid.mpp == pytest.approx(2.0)
    half = make_grid(slide, patch_size=32, level=1, stride=16, tissue=True)
    assert half.downsample == 64.0 and (half.rows, half.cols) == (7, 10)
    assert half.patch_level0 == 128.0


def test_grid_mpp_selection() -> None:
    slide = _two_level_slide()
    exact = make_grid(slide, patch_size=32, mpp=2.0, tissue=True)
    assert (exact.level, exact.read_size) == (1, 32)
    # 1.0 um/px lies between the levels (0.5 and 2.0): read 64 px at level 0, resize to 32
    finer = make_grid(slide, patch_size=32, mpp=1.0, tissue=True)
    assert (finer.level, finer.read_size, finer.downsample) == (0, 64, 64.0)
    assert finer.mpp == pytest.approx(1.0)
    # 1.9 is 5% off level 1: read at level 0 and resize rather than use the wrong scale
    off = make_grid(slide, patch_size=32, mpp=1.9, tissue=True)
    assert (off.level, off.read_size) == (0, round(32 * 3.8))


def test_grid_bad_input() -> None:
    slide = _two_level_slide()
    with pytest.raises(ProtorefineError, match="levels 0..1"):
        make_grid(slide, level=2)
    with pytest.raises(ProtorefineError, match="not both"):
        make_grid(slide, level=1, mpp=2.0)
    with pytest.raises(ProtorefineError, match="finer than"):
        make_grid(slide, mpp=0.1)
    # a slide that records no pixel size is taken to be at the asked resolution (refine says so)
    no_mpp = Slide.from_array(_tissue_image(64, 64))
    g = make_grid(no_mpp, mpp=1.0, patch_size=16)
    assert (g.level, g.read_size, g.rows, g.mpp) == (0, 16, 4, None)


def test_tissue_flags_on_white_and_tissue() -> None:
    img = np.full((256, 384, 3), 245, dtype=np.uint8)
    img[:128, :192] = _tissue_image(128, 192)
    grid = make_grid(Slide.from_array(img), patch_size=32)
    expected = np.zeros((8, 12), bool)
    expected[:4, :6] = True
    assert np.array_equal(grid.tissue.reshape(8, 12), expected)
    assert grid.tissue_fraction.reshape(8, 12)[:4, :6].min() > 0.9


def test_tissue_mask_argument_and_fraction() -> None:
    slide = Slide.from_array(_tissue_image(128, 128))
    mask = np.zeros((16, 16), bool)  # downsample 8
    mask[:, :5] = True  # 40 px: patch 0 (0..32) full, patch 1 (32..64) a quarter
    grid = make_grid(slide, patch_size=32, tissue=(mask, 8.0))
    frac = grid.tissue_fraction.reshape(4, 4)
    assert frac[0].tolist() == pytest.approx([1.0, 0.25, 0.0, 0.0])
    assert grid.tissue.reshape(4, 4)[0].tolist() == [True, True, False, False]
    strict = make_grid(slide, patch_size=32, tissue=(mask, 8.0), min_tissue=0.5)
    assert strict.tissue.reshape(4, 4)[0].tolist() == [True, False, False, False]


def test_to_image_and_round_trip(tmp_path: Path) -> None:
    slide = Slide.from_array(_tissue_image(96, 128))
    mask = np.ones((3, 4), bool)
    mask[0, 0] = False
    grid = make_grid(slide, patch_size=32, tissue=mask)
    n_t = int(grid.tissue.sum())
    img = grid.to_image(np.arange(n_t, dtype=np.int64) + 1, fill=-1)
    assert img.shape == (3, 4) and img[0, 0] == -1 and img[0, 1] == 1 and img[2, 3] == n_t
    assert grid.to_image(np.ones(grid.n), fill=0).sum() == grid.n
    assert np.array_equal(grid.from_image(img), np.arange(n_t) + 1)
    with pytest.raises(ProtorefineError, match="expected 12 patches"):
        grid.to_image(np.ones(5))
    np.savez(tmp_path / "g.npz", **grid.to_dict())
    with np.load(tmp_path / "g.npz") as d:
        back = PatchGrid.from_dict(dict(d))
    assert back.shape == grid.shape and back.downsample == grid.downsample
    assert np.array_equal(back.tissue, grid.tissue) and np.array_equal(back.yx, grid.yx)
    assert back.mpp is None
    # the cached features' key: the same cells stored and reloaded, other cells another key
    assert back.signature() == grid.signature()
    assert make_grid(slide, patch_size=32, tissue=True).signature() != grid.signature()


# ---- coarse labels ----------------------------------------------------------------------


def test_coarse_labels_square() -> None:
    slide = Slide.from_array(_tissue_image(320, 320))
    grid = make_grid(slide, patch_size=32, tissue=True)  # 10 x 10 cells
    ann = AnnotationSet([Annotation(box(64, 64, 256, 256), "Tumor")])  # cells 2..7
    inside, dist = coarse_labels(grid, ann)
    inside, dist = inside.reshape(10, 10), dist.reshape(10, 10)
    assert inside[2:8, 2:8].min() == pytest.approx(1.0)
    assert inside.sum() == pytest.approx(36.0)
    assert dist[4, 4] == pytest.approx(2.5, abs=0.2)  # centre 4.5 cells, edges at 2 and 8
    assert dist[2, 4] == pytest.approx(0.5, abs=0.2)
    assert dist[0, 4] == pytest.approx(-1.5, abs=0.2)
    assert dist[0, 0] == pytest.approx(-np.hypot(1.5, 1.5), abs=0.2)
    assert ((dist > 0) == (inside > 0.5)).all()


def test_coarse_labels_partial_cells_and_exclusion() -> None:
    slide = Slide.from_array(_tissue_image(128, 128))
    grid = make_grid(slide, patch_size=32, tissue=True)
    ann = AnnotationSet(
        [
            Annotation(box(0, 0, 80, 128), "Tumor"),  # columns 0, 1 full; column 2 half
            Annotation(box(0, 0, 32, 32), "Exclusion"),
        ]
    )
    inside, dist = coarse_labels(grid, ann)
    inside = inside.reshape(4, 4)
    assert inside[1:, 0].tolist() == pytest.approx([1, 1, 1])
    assert inside[0, 0] == pytest.approx(0.0)
    assert inside[:, 2].tolist() == pytest.approx([0.5] * 4)
    assert inside[:, 3].max() == 0.0
    empty, d_empty = coarse_labels(grid, AnnotationSet([]))
    assert empty.max() == 0.0 and (d_empty < 0).all()


def test_finer_grid_reads_a_centred_window_and_labels_the_cell() -> None:
    img = _tissue_image(128, 128)
    slide = Slide.from_array(img)
    grid = make_grid(slide, patch_size=32, stride=16, tissue=True)  # 8 x 8 cells of 16 px
    assert (grid.rows, grid.cols, grid.downsample, grid.read_offset) == (8, 8, 16.0, 8)
    # cell (3, 5) sees the 32 px window around it: rows 40..71, columns 72..103
    patch = read_patches(slide, grid, [3 * 8 + 5])[0]
    np.testing.assert_array_equal(patch, img[40:72, 72:104])
    # at the slide's edge the window shifts inside rather than reading glass
    np.testing.assert_array_equal(read_patches(slide, grid, [0])[0], img[:32, :32])
    np.testing.assert_array_equal(read_patches(slide, grid, [63])[0], img[96:, 96:])
    # labels belong to the cell, not to its wider window
    ann = AnnotationSet([Annotation(box(0, 0, 48, 128), "Tumor")])  # columns 0..2 exactly
    inside, _ = coarse_labels(grid, ann)
    assert inside.reshape(8, 8)[:, :3].min() == pytest.approx(1.0)
    assert inside.reshape(8, 8)[:, 3:].max() == pytest.approx(0.0)


# ---- device and encoders -----------------------------------------------------------------


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ProtorefineError, match="expected one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ProtorefineError, match="CPU-only build|no CUDA GPU answers"):
            resolve_device("cuda")


@pytest.mark.parametrize(
    ("build", "message"),
    [(None, "CPU-only build; install a CUDA build"), ("12.8", "no CUDA GPU answers .*nvidia-smi")],
)
def test_cuda_asked_for_without_a_gpu_says_why(monkeypatch, build, message) -> None:
    """The two usual causes on a desktop: the CPU wheel of torch, or no driver answering."""
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ProtorefineError, match=message):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("cuda", "mps", "picked"),
    [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")],
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, picked) -> None:
    """The one device resolver: ``auto`` (or no name) is CUDA, then Apple MPS, then the CPU."""
    from protorefine.features import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(device, "_mps_available", lambda: mps)
    monkeypatch.setattr(device, "gpu_left_unused", lambda: None)
    for name in ("auto", "AUTO", None, ""):
        assert resolve_device(name) == torch.device(picked)


@pytest.mark.parametrize("build", [None, "12.8"])
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_name_without_cuda_is_one_line_error(monkeypatch, build, name) -> None:
    """A CUDA name on a machine without CUDA fails at once, in one line, naming the device."""
    monkeypatch.setattr(torch.version, "cuda", build)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ProtorefineError) as err:
        resolve_device(name)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"device {name!r}: ")
    assert "--device cpu or auto" in text


def test_mps_asked_for_without_mps(monkeypatch) -> None:
    from protorefine.features import device

    monkeypatch.setattr(device, "_mps_available", lambda: False)
    with pytest.raises(ProtorefineError, match="Apple MPS is not available"):
        resolve_device("mps")


def test_auto_on_a_gpu_machine_with_the_cpu_wheel_says_so_once(monkeypatch, caplog) -> None:
    from protorefine.features import device

    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_mps_available", lambda: False)
    monkeypatch.setattr(device.shutil, "which", lambda cmd: "/usr/bin/nvidia-smi")
    device._warn_cpu_build_beside_gpu.cache_clear()
    with caplog.at_level("WARNING", logger="protorefine"):
        assert resolve_device("auto") == resolve_device("auto") == torch.device("cpu")
    device._warn_cpu_build_beside_gpu.cache_clear()
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "CPU-only build" in said[0] and "README" in said[0]
    assert device.gpu_left_unused() in said[0]


def test_efficientnet_lite0_shape_determinism_and_hash() -> None:
    enc = get_encoder("efficientnet-lite0", device="cpu", input_size=32)
    assert (enc.name, enc.dim, enc.input_size) == ("efficientnet-lite0", 1280, 32)
    path = efficientnet_lite0_weights()
    assert enc.weight_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    batch = np.stack([_tissue_image(32, 32, seed=s) for s in range(3)])
    a, b = enc.embed(batch), enc.embed(batch)
    assert a.shape == (3, 1280) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b)
    one = enc.embed(batch[1:2])
    np.testing.assert_allclose(one[0], a[1], rtol=1e-4, atol=1e-5)
    assert not np.allclose(a[0], a[1])  # different patches, different features
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("_conv_stem.weight", "_blocks.3._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(enc.net.state_dict()[f"model.{key}"].cpu(), state[key])
    big = enc.embed(np.stack([_tissue_image(64, 64)]))  # resized to the input size inside
    assert big.shape == (1, 1280)


def test_colour_texture_encoder() -> None:
    enc = get_encoder("colour-texture", device="cpu", input_size=32)
    assert enc.dim == 77 and enc.input_size == 32 and len(enc.weight_hash) == 64
    pink = np.full((2, 32, 32, 3), (230, 150, 200), dtype=np.uint8)
    purple = np.full((2, 32, 32, 3), (90, 60, 150), dtype=np.uint8)
    batch = np.concatenate([pink, purple, _tissue_image(32, 32)[None]])
    f = enc.embed(batch)
    assert f.shape == (5, 77) and np.isfinite(f).all()
    assert np.array_equal(f, enc.embed(batch))
    np.testing.assert_allclose(enc.embed(batch[4:5])[0], f[4], rtol=1e-5, atol=1e-5)
    from protorefine.features.colour_texture import feature_names

    h_mean = feature_names().index("h_mean")
    assert f[2, h_mean] > f[0, h_mean] + 1  # purple (haematoxylin) above pink, in ref std units


def test_colour_texture_matches_skimage_hed() -> None:
    from skimage.color import rgb2hed

    from protorefine.features.colour_texture import ColourTexture, feature_names

    img = _tissue_image(32, 32)
    raw = ColourTexture().raw(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)
    names = feature_names()
    hed = rgb2hed(img / 255.0)
    for k, c in enumerate("hed"):
        assert raw[0, names.index(f"{c}_mean")].item() == pytest.approx(
            hed[..., k].mean(), abs=1e-5
        )


def test_unknown_encoder_lists_known() -> None:
    with pytest.raises(ProtorefineError) as e:
        get_encoder("resnet-9000", device="cpu")
    msg = str(e.value)
    assert "resnet-9000" in msg and "efficientnet-lite0" in msg and "colour-texture" in msg
    assert "\n" not in msg
    assert "TorchScript" in msg and "timm:" in msg
    assert list_encoders()[:2] == ["efficientnet-lite0", "colour-texture"]
    for name in list_encoders():  # every listed name builds (the napari widget offers them all)
        assert get_encoder(name, device="cpu", input_size=32).dim > 0


def test_combined_encoder_puts_its_parts_side_by_side() -> None:
    enc = get_encoder("efficientnet-lite0+colour-texture", device="cpu", input_size=32)
    eff = get_encoder("efficientnet-lite0", device="cpu", input_size=32)
    ct = get_encoder("colour-texture", device="cpu", input_size=32)
    assert enc.name == "efficientnet-lite0+colour-texture"
    assert (enc.dim, enc.blocks, eff.blocks) == (1357, (1280, 77), (1280,))
    assert len(enc.weight_hash) == 64 and enc.weight_hash not in (eff.weight_hash, ct.weight_hash)
    slide = _two_level_slide()
    grid = make_grid(slide, patch_size=32, level=1, tissue=True)
    feats = extract_features(slide, grid, enc, batch_size=8)
    parts = [extract_features(slide, grid, e, batch_size=8) for e in (eff, ct)]
    np.testing.assert_allclose(feats, np.concatenate(parts, axis=1), rtol=1e-4, atol=1e-4)
    for bad in ("efficientnet-lite0+", "colour-texture + colour-texture"):
        with pytest.raises(ProtorefineError, match="join distinct encoder names"):
            get_encoder(bad, device="cpu")
    with pytest.raises(ProtorefineError, match="unknown encoder 'nope': known are"):
        get_encoder("colour-texture+nope", device="cpu")


def test_torchscript_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
    ).eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(path))
    enc = get_encoder(str(path), device="cpu", input_size=16)
    assert enc.dim == 5 and enc.input_size == 16
    assert enc.weight_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    batch = np.stack([_tissue_image(16, 16, seed=s) for s in range(2)])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - mean) / std).flatten(1).numpy()
    np.testing.assert_allclose(enc.embed(batch), expected, rtol=1e-4, atol=1e-5)


class _TokenNet(torch.nn.Module):
    """A stand-in for a vision transformer: (B, tokens, D) out, class token first."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 6, 8, stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, 6)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


def test_save_encoder_brings_your_own_model(tmp_path: Path) -> None:
    """A model with its own input size and normalisation (as pathology foundation models have),
    saved once with save_encoder, is an encoder by its path: same features as the model itself
    fed the way it was trained, nothing else needed."""
    from protorefine.features import save_encoder

    torch.manual_seed(0)
    net = _TokenNet().eval()
    mean, std = (0.70, 0.58, 0.70), (0.21, 0.23, 0.18)  # not ImageNet's
    path = save_encoder(net, tmp_path / "mine.ts", input_size=32, mean=mean, std=std)
    enc = get_encoder(str(path), device="cpu")
    assert enc.input_size == 32 and enc.dim == 6  # both read from the file
    batch = np.stack([_tissue_image(32, 32, seed=s) for s in range(3)])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - m) / s)[:, 0].numpy()  # the class token
    np.testing.assert_allclose(enc.embed(batch), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ProtorefineError, match=r"mine\.onnx: name the encoder file \.pt"):
        save_encoder(net, tmp_path / "mine.onnx")
    with pytest.raises(ProtorefineError, match="cannot be saved as TorchScript"):
        save_encoder(torch.nn.Linear(4, 2), tmp_path / "linear.pt")  # does not take images
    assert not (tmp_path / "linear.pt").exists()


def test_bad_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ProtorefineError) as e:
        get_encoder(str(bad), device="cpu")
    assert "broken.pt" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ProtorefineError, match="no such TorchScript file"):
        get_encoder(str(tmp_path / "missing.pt"), device="cpu")


def test_timm_needs_local_weights_and_timm(tmp_path: Path) -> None:
    with pytest.raises(ProtorefineError, match="never downloaded"):
        get_encoder("timm:resnet18", device="cpu")
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ProtorefineError, match="timm is not installed"):
            get_encoder(f"timm:resnet18@{tmp_path / 'w.pth'}", device="cpu")
    else:
        bad = tmp_path / "w.pth"
        bad.write_bytes(b"garbage")
        with pytest.raises(ProtorefineError, match="do not load"):
            get_encoder(f"timm:resnet18@{bad}", device="cpu")


class _StandInTimm:
    """What protorefine uses of timm (``create_model(name, pretrained=False, num_classes=0)``
    returning a net with ``num_features`` and ``pretrained_cfg``), for machines without timm."""

    @staticmethod
    def create_model(name: str, pretrained: bool, num_classes: int) -> torch.nn.Module:
        if name != "tiny-cnn":
            raise RuntimeError(f"Unknown model ({name})")
        assert pretrained is False and num_classes == 0
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        net.num_features = 8
        net.pretrained_cfg = {"input_size": (3, 96, 96), "mean": (0.5,) * 3, "std": (0.25,) * 3}
        return net


@pytest.mark.parametrize("form", ["pth", "lightning-ddp", "dino-teacher", "safetensors"])
def test_timm_encoder_loads_local_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """A timm model with weights the user has, saved the ways training scripts save them."""
    import sys

    monkeypatch.setitem(sys.modules, "timm", _StandInTimm)
    torch.manual_seed(0)
    trained = _StandInTimm.create_model("tiny-cnn", pretrained=False, num_classes=0)
    state = dict(trained.state_dict())
    state["head.weight"] = torch.zeros(2, 8)  # a classifier head: dropped
    if form == "safetensors":
        safetensors_torch = pytest.importorskip("safetensors.torch")
        path = tmp_path / "model.safetensors"
        safetensors_torch.save_file(state, str(path))
    else:
        path = tmp_path / "model.pth"
        if form == "lightning-ddp":
            state = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
        elif form == "dino-teacher":
            state = {"teacher": {f"backbone.{k}": v for k, v in state.items()}}
        torch.save(state, path)
    enc = get_encoder(f"timm:tiny-cnn@{path}", device="cpu")
    assert enc.input_size == 96 and enc.dim == 8
    patches = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    x = torch.as_tensor(patches).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = trained((x - 0.5) / 0.25).numpy()
    np.testing.assert_allclose(enc.embed(patches), expected, rtol=1e-4, atol=1e-5)


def test_timm_weights_of_another_model_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "timm", _StandInTimm)
    path = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ProtorefineError) as e:
        get_encoder(f"timm:tiny-cnn@{path}", device="cpu")
    assert "other.pth" in str(e.value) and "do not fit" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(ProtorefineError, match="cannot build 'vit-huge'"):
        get_encoder(f"timm:vit-huge@{path}", device="cpu")


# ---- extraction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loader", "workers"),
    [
        ("inline", None),
        ("thread", None),
        ("thread", 4),
        ("process", None),
    ],  # thread x4: napari on a GPU
)
def test_extract_matches_one_by_one(loader: str, workers: int | None) -> None:
    slide = _two_level_slide()  # 48-px chunks: patches straddle chunks, visited out of order
    mask = np.ones((4, 6), bool)
    mask[0, :3] = False
    grid = make_grid(slide, patch_size=40, mpp=1.0, tissue=(mask, 100.0))  # level 0, 80 px reads
    enc = get_encoder("colour-texture", device="cpu", input_size=20)
    seen: list[tuple[int, int]] = []
    feats = extract_features(
        slide,
        grid,
        enc,
        batch_size=7,
        loader=loader,
        num_workers=workers,
        progress=lambda d, t, m: seen.append((d, t)),
    )
    idx = np.flatnonzero(grid.tissue)
    assert feats.shape == (len(idx), enc.dim)
    # 80 px windows for a 20 px input: read from level 1, which holds them 4x smaller
    assert read_level(slide, grid, 20) == (1, 4)
    size = grid.read_size // 4
    one_by_one = np.stack(
        [
            enc.embed(slide.read_region(1, *(grid.yx_level[i] // 4), size, size)[None])[0]
            for i in idx
        ]
    )
    np.testing.assert_allclose(feats, one_by_one, rtol=1e-4, atol=1e-4)
    assert seen[0] == (0, len(idx)) and seen[-1] == (len(idx), len(idx))
    assert len(seen) == 1 + int(np.ceil(len(idx) / 7))


def test_extract_level1_all_patches_with_efficientnet() -> None:
    slide = _two_level_slide()
    grid = make_grid(slide, patch_size=32, level=1, tissue=True)
    enc = get_encoder("efficientnet-lite0", device="cpu", input_size=32)
    feats = extract_features(slide, grid, enc, batch_size=8, indices=np.arange(grid.n))
    assert feats.shape == (grid.n, 1280)
    i = 7
    y, x = grid.yx_level[i]
    ref = enc.embed(slide.read_region(1, int(y), int(x), 32, 32)[None])[0]
    np.testing.assert_allclose(feats[i], ref, rtol=1e-4, atol=1e-4)


def test_cpu_threads_use_every_core_only_on_an_idle_machine() -> None:
    from protorefine.features.extract import cpu_threads

    assert cpu_threads(2, 1, 2, load=0.3) == 2  # idle: the encoder gets both cores
    assert cpu_threads(2, 1, 2, load=6.0) == 1  # busy: the reader keeps its own core
    assert cpu_threads(2, 2, 2, load=9.0) == 1  # never fewer than one
    assert cpu_threads(16, 1, 4, load=0.0) == 4  # never above the process's setting
    assert cpu_threads(16, 1, 16, load=14.0) == 15
    assert 1 <= cpu_threads(2, 1, 2) <= 2  # reads the real load average


def test_extract_cancel_raises() -> None:
    slide = Slide.from_array(_tissue_image(128, 128))
    grid = make_grid(slide, patch_size=16, tissue=True)
    enc = get_encoder("colour-texture", device="cpu", input_size=16)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(CancelledError, match="cancelled"):
        extract_features(slide, grid, enc, batch_size=8, cancel=cancel)
    assert len(calls) == 3  # checked before the first batch and after each batch
    with pytest.raises(ProtorefineError, match="loader"):
        extract_features(slide, grid, enc, loader="gpu-magic")


def test_extract_no_tissue_returns_empty() -> None:
    slide = Slide.from_array(_tissue_image(64, 64))
    grid = make_grid(slide, patch_size=32, tissue=np.zeros((2, 2), bool))
    enc = get_encoder("colour-texture", device="cpu", input_size=16)
    assert extract_features(slide, grid, enc).shape == (0, enc.dim)


def test_region_reader_matches_read_region_with_tiny_cache() -> None:
    from protorefine.features.extract import RegionReader

    slide = _two_level_slide()
    reader = RegionReader(slide.levels[0], max_bytes=4 * 48 * 48 * 3)  # about 4 chunks kept
    assert reader.cached
    rng = np.random.default_rng(1)
    for _ in range(30):
        y, x = (int(v) for v in rng.integers(-60, 620, 2))
        h, w = (int(v) for v in rng.integers(1, 130, 2))
        assert np.array_equal(reader.read(y, x, h, w), slide.read_region(0, y, x, h, w))
    assert reader._bytes <= reader.max_bytes


def test_real_svs_grid_and_features(slides_dir: Path) -> None:
    from protorefine.slides import open_slide

    slide = open_slide(slides_dir / "CMU-1-Small-Region.svs")  # 2220 x 2967, 0.499 um/px
    grid = make_grid(slide, patch_size=112, mpp=1.0)
    assert (grid.level, grid.read_size) == (0, 224) and grid.mpp == pytest.approx(0.998)
    assert (grid.rows, grid.cols) == (14, 10)
    assert 0.15 < grid.tissue.mean() < 0.9  # a tissue section with glass around it
    enc = get_encoder("colour-texture", device="cpu", input_size=56)
    idx = grid.tissue_index[:5]
    feats = extract_features(slide, grid, enc, indices=idx)
    ref = enc.embed(
        np.stack([slide.read_region(0, *(int(v) for v in grid.yx[i]), 224, 224) for i in idx])
    )
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)
    two = open_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs")  # 2 levels, no mpp recorded
    g1 = make_grid(two, patch_size=128, level=1)
    assert g1.level == 1 and g1.downsample == pytest.approx(128 * two.downsamples[1])
    assert g1.tissue.any()
    assert make_grid(two, mpp=1.0).level == 0  # no mpp recorded: taken as 1.0 at level 0


@pytest.mark.parametrize(
    ("pyramid", "stride", "expect"),
    [((2, 4), None, (1, 2)), ((4,), None, (0, 1)), ((2,), 30, (0, 1)), ((2, 4), 32, (1, 2))],
    ids=["2x pyramid", "4x pyramid", "odd stride", "finer grid"],
)
def test_large_windows_are_read_from_the_coarser_level_that_averages_them(
    pyramid, stride, expect
) -> None:
    """64 px windows fed to a 32 px encoder: a 2x level below holds exactly their 2x box
    average, so the windows are read there (a quarter of the pixels), and the encoder gets
    the same input as from full resolution; a 4x step, or windows off the 2 px lattice,
    keep the full-resolution read."""
    from PIL import Image

    from protorefine.features.extract import PatchBatches
    from protorefine.slides.base import Slide as S

    img = _tissue_image(256, 256)
    levels = [img]
    for d in pyramid:
        levels.append(np.asarray(Image.fromarray(img).reduce(d)))
    slide = S(path=Path("p"), name="p", levels=[da.from_array(lvl) for lvl in levels])
    flat = Slide.from_array(img)
    grid = make_grid(slide, patch_size=64, stride=stride, tissue=True)
    assert read_level(slide, grid, 32) == expect
    idx = np.arange(grid.n)
    expected = read_patches(
        flat, make_grid(flat, patch_size=64, stride=stride, tissue=True), idx, 32
    )
    np.testing.assert_array_equal(read_patches(slide, grid, idx, 32), expected)
    ds = PatchBatches(slide, grid, [idx], 32)
    np.testing.assert_array_equal(ds[0].numpy(), expected)


def test_a_patch_larger_than_the_slide_is_named() -> None:
    """A 100000 px patch on a 300x500 slide: say so (it said "no tissue found")."""
    slide = Slide.from_array(_tissue_image(300, 500), mpp=0.25)
    with pytest.raises(ProtorefineError) as info:
        make_grid(slide, patch_size=100000)
    msg = str(info.value)
    assert "100000" in msg and "500x300" in msg and "larger than the slide" in msg
