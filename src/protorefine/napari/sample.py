"""napari sample data: a synthetic H&E-like slide with its simulated coarse tumour outline."""

from __future__ import annotations

from protorefine.napari.layers import (
    LayerData,
    edge_width_for,
    image_layer_data,
    pixel_scale,
    shapes_layer_data,
)
from protorefine.synthetic import simulate_coarse, synthetic_slide

SAMPLE_SHAPE = (4096, 4096)


def sample_slide() -> list[LayerData]:
    """The synthetic slide (lazy, multiscale) and its coarse annotation as a Shapes layer."""
    slide, truth, truth_ds = synthetic_slide(SAMPLE_SHAPE, seed=0)
    coarse = simulate_coarse(truth, truth_ds, seed=0)
    shapes = shapes_layer_data(
        coarse,
        pixel_scale(slide.mpp),
        name=f"{slide.name} coarse",
        mpp=slide.mpp,
        edge_width=edge_width_for(slide.shape),
    )
    return [image_layer_data(slide), shapes]
