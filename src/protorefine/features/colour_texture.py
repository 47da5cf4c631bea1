"""A weight-free patch encoder from stain (colour deconvolution) and texture statistics, in torch.

Every statistic is computed per patch with tensor ops, so a batch runs on the
device in one pass. Features are standardised with fixed reference means and
standard deviations measured once on real H&E patches (``colour_texture_ref.json``;
rebuild with ``python -m protorefine.features.colour_texture IMAGE_DIR...``).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb

from protorefine._atomic import atomic_write_text
from protorefine.features.images import resize_batch

REF_FILE = Path(__file__).with_name("colour_texture_ref.json")
VERSION = "colour-texture/1"
_GRAD_EDGES = (0.01, 0.02, 0.035, 0.05, 0.07, 0.1, 0.15)  # gradient magnitude bin edges
_LOG_SIGMAS = (1.0, 2.0, 4.0)  # as sigma 1 on a 1x, 2x, 4x average-pooled pyramid
_BLOB_SIGMAS = (1.5, 3.0)
_NUCLEAR_H = (0.025, 0.04)  # haematoxylin optical-density thresholds for "nuclear" pixels


def feature_names() -> list[str]:
    """Names of the output dimensions, in order."""
    names = [f"rgb_{s}_{c}" for s in ("mean", "std") for c in "rgb"]
    names += [f"{c}_{s}" for c in "hed" for s in ("mean", "std", "q10", "q50", "q90")]
    names += ["background", "od_mean"]
    names += [f"nuclear_frac_{t}" for t in _NUCLEAR_H]
    names += [f"blob_density_s{s}" for s in _BLOB_SIGMAS]
    names += [f"grad_s{k}_bin{b}" for k in (1, 2, 4) for b in range(len(_GRAD_EDGES) + 1)]
    names += [f"log_s{s}_{m}" for s in _LOG_SIGMAS for m in ("absmean", "std")]
    names += [f"lbp_s{k}_bin{b}" for k in (1, 2) for b in range(10)]
    return names


def _gauss_taps(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps reaching 3 sigma."""
    r = max(1, int(math.ceil(3 * sigma)))
    ax = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(ax**2) / (2 * sigma**2))
    return k / k.sum()


def _dwconv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Convolve each (B, 1, H, W) image with the kernels ``k`` (O, 1, kh, kw) -> (B, O, H', W').

    The batch is folded into channels (a grouped convolution), which CPU backends
    run far faster than a batch of single-channel images.
    """
    b, _, h, w = x.shape
    o = k.shape[0]
    out = F.conv2d(x.reshape(1, b, h, w), k.repeat(b, 1, 1, 1), groups=b)
    return out.reshape(b, o, *out.shape[-2:])


def _blur(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding."""
    r = taps.numel() // 2
    x = _dwconv(F.pad(x, (r, r, 0, 0), mode="reflect"), taps.view(1, 1, 1, -1))
    return _dwconv(F.pad(x, (0, 0, r, r), mode="reflect"), taps.view(1, 1, -1, 1))


def _local_max(x: torch.Tensor) -> torch.Tensor:
    """True where a (B, 1, H, W) value is at least each of its 8 neighbours."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    out = torch.ones_like(x, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                out &= x >= p[..., dy : dy + h, dx : dx + w]
    return out


def _neg_laplacian(x: torch.Tensor) -> torch.Tensor:
    """Negated 4-neighbour Laplacian (bright blobs respond positively), replicate padding."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    c = p[..., 1:-1, 1:-1]
    return 4 * c - p[..., :-2, 1:-1] - p[..., 2:, 1:-1] - p[..., 1:-1, :-2] - p[..., 1:-1, 2:]


def _riu2_table() -> torch.Tensor:
    """Map each 8-bit LBP code to its rotation-invariant uniform bin (0..8 ones, 9 non-uniform)."""
    table = []
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[i - 1] for i in range(8))
        table.append(sum(bits) if transitions <= 2 else 9)
    return torch.tensor(table, dtype=torch.long)


_RIU2 = _riu2_table()
_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))  # circular order


def _lbp_hist(gray: torch.Tensor) -> torch.Tensor:
    """Rotation-invariant uniform LBP (8 neighbours, radius 1) histogram, 10 bins, per image."""
    p = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    h, w = gray.shape[-2:]
    centre = p[..., 1 : 1 + h, 1 : 1 + w]
    code = torch.zeros(gray.shape, dtype=torch.uint8, device=gray.device)
    for i, (dy, dx) in enumerate(_RING):
        code |= (p[..., dy : dy + h, dx : dx + w] >= centre).to(torch.uint8) << i
    bins = _RIU2.to(gray.device)[code.long()]
    b = bins.shape[0]
    flat = bins.reshape(b, -1) + 10 * torch.arange(b, device=gray.device)[:, None]
    hist = torch.bincount(flat.reshape(-1), minlength=10 * b).reshape(b, 10).float()
    return hist / (h * w)


def _hist(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Per-image normalised histogram of ``values`` (B, ...) over bins split at ``edges``."""
    b = values.shape[0]
    nb = edges.numel() + 1
    idx = torch.bucketize(values.reshape(b, -1).contiguous(), edges)
    flat = idx + nb * torch.arange(b, device=values.device)[:, None]
    hist = torch.bincount(flat.reshape(-1), minlength=nb * b).reshape(b, nb).float()
    return hist / idx.shape[1]


class ColourTexture(torch.nn.Module):
    """Stain and texture statistics of RGB patches in [0, 1] (B, 3, H, W) -> (B, D), standardised."""

    # Buffers (registered in __init__; ``taps_blob<i>`` are read with getattr).
    hed_from_rgb: torch.Tensor
    grad_edges: torch.Tensor
    taps_log: torch.Tensor
    sobel: torch.Tensor
    ref_mean: torch.Tensor
    ref_std: torch.Tensor

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> None:
        super().__init__()
        dim = len(feature_names())
        self.register_buffer("hed_from_rgb", torch.tensor(hed_from_rgb, dtype=torch.float32))
        self.register_buffer("grad_edges", torch.tensor(_GRAD_EDGES, dtype=torch.float32))
        self.register_buffer("taps_log", _gauss_taps(1.0))
        for i, s in enumerate(_BLOB_SIGMAS):
            self.register_buffer(f"taps_blob{i}", _gauss_taps(s))
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([sobel, sobel.T])[:, None])
        mean = np.zeros(dim) if mean is None else np.asarray(mean)
        std = np.ones(dim) if std is None else np.asarray(std)
        self.register_buffer("ref_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("ref_std", torch.tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def raw(self, rgb: torch.Tensor) -> torch.Tensor:
        """Unstandardised statistics of (B, 3, H, W) RGB in [0, 1]."""
        rgb = rgb.float()
        b = rgb.shape[0]
        flat = rgb.reshape(b, 3, -1)
        feats = [flat.mean(-1), flat.std(-1)]
        od = -torch.log(rgb.clamp_min(1e-6))
        unmix = (self.hed_from_rgb.T / -math.log(1e-6))[:, :, None, None]
        hed = F.conv2d(od, unmix).clamp_min(0)
        hflat = hed.reshape(b, 3, -1)
        pool = max(1, min(hed.shape[-2:]) // 32)  # quantiles of about 32x32 local means
        small = F.avg_pool2d(hed, pool).reshape(b, 3, -1)
        q = torch.quantile(small, torch.tensor([0.1, 0.5, 0.9], device=rgb.device), dim=-1)
        stain = torch.cat(
            [hflat.mean(-1)[..., None], hflat.std(-1)[..., None], q.permute(1, 2, 0)], 2
        )
        feats.append(stain.reshape(b, 15))
        gray = rgb.mean(1, keepdim=True)
        feats.append((gray > 0.85).float().mean((1, 2, 3))[:, None])
        feats.append(od.mean((1, 2, 3))[:, None])
        haem = hed[:, :1]
        feats.append(torch.stack([(haem > t).float().mean((1, 2, 3)) for t in _NUCLEAR_H], 1))
        dens = []
        for i, s in enumerate(_BLOB_SIGMAS):
            resp = _neg_laplacian(_blur(haem, getattr(self, f"taps_blob{i}"))) * s**2
            peak = _local_max(resp) & (resp > 0.002)
            dens.append(peak.float().sum((1, 2, 3)) * (1000.0 / gray[0].numel()))
        feats.append(torch.stack(dens, 1))
        pyramid = [gray, F.avg_pool2d(gray, 2), F.avg_pool2d(gray, 4)]
        for g in pyramid:
            d = _dwconv(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.sobel)
            feats.append(_hist(torch.sqrt((d**2).sum(1)), self.grad_edges))
        logs = []
        for g in pyramid:  # LoG at sigma 1, 2, 4 of the full-size patch
            r = _neg_laplacian(_blur(g, self.taps_log))
            logs += [r.abs().mean((1, 2, 3)), r.std((1, 2, 3))]
        feats.append(torch.stack(logs, 1) * 100)
        feats += [_lbp_hist(gray), _lbp_hist(pyramid[1])]
        return torch.cat(feats, 1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Standardised statistics of (B, 3, H, W) RGB in [0, 1]."""
        return (self.raw(rgb) - self.ref_mean) / self.ref_std


def load_reference() -> tuple[np.ndarray, np.ndarray, str]:
    """Reference (mean, std) and their sha256 from ``colour_texture_ref.json``."""
    data = REF_FILE.read_bytes()
    ref = json.loads(data)
    names = feature_names()
    if ref.get("names") != names:
        raise RuntimeError(f"{REF_FILE}: feature names differ from this version; recalibrate")
    digest = hashlib.sha256(VERSION.encode() + data).hexdigest()
    return np.asarray(ref["mean"], float), np.asarray(ref["std"], float), digest


def calibrate(image_dirs: list[Path], patch: int = 224, size: int = 112) -> dict:
    """Measure reference mean/std of the raw statistics on patches cut from H&E images."""
    from skimage.io import imread

    patches = []
    for d in image_dirs:
        for f in sorted(Path(d).glob("*.jpg")):
            img = imread(f)[..., :3]
            for y in range(0, img.shape[0] - patch + 1, patch):
                for x in range(0, img.shape[1] - patch + 1, patch):
                    patches.append(img[y : y + patch, x : x + patch])
    batch = resize_batch(np.stack(patches), size)
    rgb = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        raw = torch.cat([ColourTexture().raw(c) for c in rgb.split(64)]).numpy()
    return {
        "names": feature_names(),
        "mean": raw.mean(0).round(6).tolist(),
        "std": np.maximum(raw.std(0), 1e-3).round(6).tolist(),
        "n_patches": len(patches),
        "patch": patch,
        "input_size": size,
        "sources": [f"{Path(d).parent.name}/{Path(d).name}" for d in image_dirs],
    }


if __name__ == "__main__":
    ref = calibrate([Path(a) for a in sys.argv[1:]])
    atomic_write_text(REF_FILE, json.dumps(ref, indent=1) + "\n")
    print(f"wrote {REF_FILE} from {ref['n_patches']} patches")
