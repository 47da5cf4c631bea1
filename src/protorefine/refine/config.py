"""One typed configuration object for every refinement stage, saved as JSON with a project."""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, fields
from typing import Any

from protorefine.errors import ProtorefineError

# Which stage each field belongs to: changing a field invalidates that stage and
# every stage after it (see ``first_changed_stage``).
STAGE_OF: dict[str, str] = {
    "patch_size": "grid",
    "level": "grid",
    "mpp": "grid",
    "stride": "grid",
    "tissue_threshold": "grid",
    "encoder": "features",
    "batch_size": "features",
    "feature_norm": "prototypes",
    "slide_norm": "prototypes",
    "local_k_max": "prototypes",
    "local_k_div": "prototypes",
    "merge_threshold": "prototypes",
    "kmeans_iters": "prototypes",
    "global_k_max": "prototypes",
    "global_prior": "prototypes",
    "boundary_width": "prototypes",
    "use_local": "pseudo_labels",
    "use_global": "pseudo_labels",
    "use_oof": "pseudo_labels",
    "oof_folds": "pseudo_labels",
    "temperature": "pseudo_labels",
    "coarse_trust": "pseudo_labels",
    "pseudo_smooth": "pseudo_labels",
    "context": "classifier",
    "final_blend": "classifier",
    "hidden": "classifier",
    "epochs": "classifier",
    "early_stop": "classifier",
    "finetune_epochs": "classifier",
    "lr": "classifier",
    "weight_decay": "classifier",
    "samples_per_epoch": "classifier",
    "train_batch": "classifier",
    "dynamic_sampling": "classifier",
    "min_weight": "classifier",
    "class_balance": "classifier",
    "rounds": "classifier",
    "update_confidence": "classifier",
    "correction_weight": "classifier",
    "seed": "prototypes",
    "smooth_sigma": "output",
    "threshold": "output",
    "outside_threshold": "output",
    "output_upsample": "output",
    "outline_smoothing": "output",
    "colour_prototypes": "output",
    "colour_weight": "output",
    "min_area": "output",
    "max_hole": "output",
    "pixel_level": "pixels",
    "pixel_mpp": "pixels",
    "pixel_cell": "pixels",
    "pixel_reliable_um": "pixels",
    "pixel_outside_um": "pixels",
    "pixel_c": "pixels",
    "pixel_confidence": "pixels",
    "pixel_smooth": "pixels",
    "pixel_threshold": "pixels",
    "pixel_upsample": "pixels",
    "pixel_min_area_um2": "pixels",
    "device": "",
}

#: The largest seed every generator the method uses accepts (scikit-learn's k-means: 2**32-1).
SEED_MAX = 2**32 - 1

#: How a field's type is named in an error ("null" where None is allowed too).
_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def _field_type(f: dataclasses.Field) -> tuple[str, bool]:
    """A field's base type name (int, float, bool, str) and whether None is allowed."""
    parts = [t.strip() for t in str(f.type).split("|")]
    return next(t for t in parts if t != "None"), "None" in parts


def _expected(base: str, optional: bool) -> str:
    return _TYPE_WORDS[base] + (" or null" if optional else "")


def _json_type_ok(value: Any, base: str, optional: bool) -> bool:
    """True when ``value`` (read from JSON) has the type the field holds."""
    if value is None:
        return optional
    if base == "bool":
        return isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if base == "int" else isinstance(value, int | float)


STAGE_ORDER = (
    "grid",
    "features",
    "prototypes",
    "pseudo_labels",
    "classifier",
    "output",
    "pixels",
)


@dataclass
class RefineConfig:
    """Defaults for every stage, from the patch grid to the output polygons.

    Distances and areas are in patches of the grid. See ``docs/method.md`` for the
    role of each value.
    """

    # grid
    patch_size: int = 64
    level: int | None = None
    mpp: float | None = 0.5
    stride: int | None = None
    tissue_threshold: float = 0.25
    # features
    encoder: str = "efficientnet-lite0"
    batch_size: int = 64
    # local prototypes (per slide)
    feature_norm: str = "standardize"
    slide_norm: bool = True
    local_k_max: int = 16
    local_k_div: float = 8.0
    merge_threshold: float = 0.95
    kmeans_iters: int = 30
    # global prototypes (across slides)
    global_k_max: int = 48
    global_prior: float = 1.0
    boundary_width: float = 2.0
    # pseudo-labels
    use_local: bool = True
    use_global: bool = False
    use_oof: bool = False
    oof_folds: int = 5
    temperature: float = 0.05
    coarse_trust: float = 0.5
    pseudo_smooth: float = 1.0
    # classifier
    context: float = 0.0
    final_blend: float = 0.0
    hidden: int = 128
    epochs: int = 20
    early_stop: float = 0.2
    finetune_epochs: int = 4
    lr: float = 3e-3
    weight_decay: float = 1e-4
    samples_per_epoch: int = 2048
    train_batch: int = 256
    dynamic_sampling: bool = True
    min_weight: float = 0.0
    class_balance: bool = True
    rounds: int = 1
    update_confidence: float = 0.8
    correction_weight: float = 4.0
    # output
    smooth_sigma: float = 0.7
    threshold: float = 0.6
    outside_threshold: float = 0.9
    output_upsample: int = 4
    outline_smoothing: int = 3
    colour_prototypes: int = 32
    colour_weight: float = 0.3
    min_area: int = 2
    max_hole: int = 2
    # pixel stage (dense features, a probability per cell of pixel_cell working pixels)
    pixel_level: bool = True
    pixel_mpp: float = 0.5
    pixel_cell: int = 16
    pixel_reliable_um: float = 32.0
    pixel_outside_um: float = 64.0
    pixel_c: float = 0.01
    pixel_confidence: float = 0.3
    pixel_smooth: float = 1.0
    pixel_threshold: float = 0.55
    pixel_upsample: int = 2
    pixel_min_area_um2: float = 200.0
    # run
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ProtorefineError naming the first value that is out of range (or not a
        number where a number belongs, or not text where text does)."""
        for f in fields(self):
            base, optional = _field_type(f)
            value = getattr(self, f.name)
            if value is None and optional or base == "bool":
                continue
            ok = isinstance(value, str) if base == "str" else isinstance(value, numbers.Real)
            if not ok:
                raise ProtorefineError(
                    f"config {f.name}={value!r}: must be {_expected(base, optional)}"
                )
        positive: tuple[str, ...] = ("patch_size", "batch_size", "local_k_max", "kmeans_iters")
        positive += ("global_k_max", "hidden", "train_batch", "rounds", "samples_per_epoch")
        positive += ("epochs", "output_upsample")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ProtorefineError(f"config {name}={getattr(self, name)!r}: must be >= 1")
        for name in ("finetune_epochs", "min_area", "max_hole"):
            if int(getattr(self, name)) < 0:
                raise ProtorefineError(f"config {name}={getattr(self, name)!r}: must be >= 0")
        if int(self.oof_folds) < 2:
            raise ProtorefineError(f"config oof_folds={self.oof_folds!r}: must be >= 2")
        if self.level is not None and int(self.level) < 0:
            raise ProtorefineError(
                f"config level={self.level!r}: must be >= 0 (0: full resolution)"
            )
        if not 0 <= int(self.seed) <= SEED_MAX:
            raise ProtorefineError(f"config seed={self.seed!r}: must be from 0 to {SEED_MAX}")
        for name in ("temperature", "local_k_div", "boundary_width", "lr"):
            if float(getattr(self, name)) <= 0:
                raise ProtorefineError(f"config {name}={getattr(self, name)!r}: must be > 0")
        if not 0.0 <= float(self.early_stop) < 1.0:
            raise ProtorefineError(
                f"config early_stop={self.early_stop!r}: must be >= 0 and below 1"
            )
        if self.stride is not None and int(self.stride) < 1:
            raise ProtorefineError(f"config stride={self.stride!r}: must be >= 1")
        if not 0 <= int(self.outline_smoothing) <= 6:
            raise ProtorefineError(
                f"config outline_smoothing={self.outline_smoothing!r}: must be 0 (pixel "
                "outline) to 6"
            )
        if float(self.context) < 0:
            raise ProtorefineError(f"config context={self.context!r}: must be >= 0")
        if int(self.colour_prototypes) < 0 or int(self.colour_prototypes) == 1:
            raise ProtorefineError(
                f"config colour_prototypes={self.colour_prototypes!r}: must be 0 (off) or >= 2"
            )
        t = float(self.threshold)
        if not 0.0 < t < 1.0:  # 1: only corrections (probability exactly 1); 0: all tissue
            raise ProtorefineError(
                f"config threshold={t!r}: must be above 0 and below 1 (no outline can be drawn "
                "at 0 or 1)"
            )
        for name in (
            "merge_threshold",
            "coarse_trust",
            "update_confidence",
            "final_blend",
            "colour_weight",
        ):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ProtorefineError(f"config {name}={v!r}: must be between 0 and 1")
        if int(self.pixel_cell) < 4 or int(self.pixel_cell) % 4:
            raise ProtorefineError(
                f"config pixel_cell={self.pixel_cell!r}: must be a multiple of 4, at least 4"
            )
        if not 0.05 <= float(self.pixel_mpp) <= 16:
            raise ProtorefineError(
                f"config pixel_mpp={self.pixel_mpp!r}: must be between 0.05 and 16 µm per pixel"
            )
        if not 0.0 < float(self.pixel_threshold) < 1.0:
            raise ProtorefineError(
                f"config pixel_threshold={self.pixel_threshold!r}: must be above 0 and below 1"
            )
        for name in ("pixel_c", "pixel_reliable_um"):
            if float(getattr(self, name)) <= 0:
                raise ProtorefineError(f"config {name}={getattr(self, name)!r}: must be > 0")
        for name in ("pixel_smooth", "pixel_min_area_um2", "pixel_outside_um"):
            if float(getattr(self, name)) < 0:
                raise ProtorefineError(f"config {name}={getattr(self, name)!r}: must be >= 0")
        if not 1 <= int(self.pixel_upsample) <= 8:
            raise ProtorefineError(f"config pixel_upsample={self.pixel_upsample!r}: must be 1 to 8")
        if not 0.0 <= float(self.pixel_confidence) < 1.0:
            raise ProtorefineError(
                f"config pixel_confidence={self.pixel_confidence!r}: must be >= 0 and below 1"
            )
        if self.feature_norm not in ("none", "center", "standardize"):
            raise ProtorefineError(
                f"config feature_norm={self.feature_norm!r}: must be none, center or standardize"
            )
        if self.level is not None and self.mpp is not None:
            raise ProtorefineError(
                "config: give level or mpp, not both (mpp is 0.5 by default: with a level, "
                "set mpp to null)"
            )
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise ProtorefineError(f"config device={self.device!r}: must be auto, cpu, cuda or mps")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefineConfig:
        """Build from a dict; unknown keys are an error so typos are not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProtorefineError(f"config: unknown setting(s) {', '.join(unknown)}")
        for f in fields(cls):
            if f.name in data:
                base, optional = _field_type(f)
                if not _json_type_ok(data[f.name], base, optional):
                    raise ProtorefineError(
                        f"config {f.name}={data[f.name]!r}: must be {_expected(base, optional)}"
                    )
        try:
            return cls(**data)
        except TypeError as exc:
            raise ProtorefineError(f"config: {exc}") from exc

    def to_json(self) -> str:
        """JSON text of the config."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RefineConfig:
        """Parse the JSON written by ``to_json``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtorefineError(f"config: not valid JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise ProtorefineError("config: expected a JSON object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> RefineConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def stage_of(field_name: str) -> str:
    """The first stage that depends on ``field_name`` ('' when none)."""
    return STAGE_OF.get(field_name, "grid")


def first_changed_stage(old: RefineConfig, new: RefineConfig) -> str | None:
    """The earliest stage whose inputs differ between two configs (None when equal)."""
    changed = [f.name for f in fields(RefineConfig) if getattr(old, f.name) != getattr(new, f.name)]
    stages = [stage_of(n) for n in changed if stage_of(n)]
    if not stages:
        return None
    return min(stages, key=STAGE_ORDER.index)
