"""napari sample data: a synthetic H&E-like slide with its simulated coarse tumour outline,
and the real H&E sample (CAMELYON tissue) with its coarse outline and its truth."""

from __future__ import annotations

from protorefine.annotations import read_annotations
from protorefine.demo import real_sample
from protorefine.napari.layers import (
    LayerData,
    edge_width_for,
    image_layer_data,
    pixel_scale,
    shapes_layer_data,
)
from protorefine.slides import open_slide
from protorefine.synthetic import simulate_coarse, synthetic_slide

SAMPLE_SHAPE = (4096, 4096)
#: Edge colour of the truth layer (the coarse outline keeps the tumour class's yellow).
TRUTH_COLOUR = "#00c8ff"


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


def real_sample_slide() -> list[LayerData]:
    """The real H&E sample (tiled TIFF), its coarse outline and its truth (hidden, cyan)."""
    files = real_sample()
    slide = open_slide(files.slide)
    s, width = pixel_scale(slide.mpp), edge_width_for(slide.shape)
    coarse = shapes_layer_data(
        read_annotations(files.coarse, slide_shape=slide.shape),
        s,
        name=f"{slide.name} coarse",
        mpp=slide.mpp,
        edge_width=width,
    )
    truth = shapes_layer_data(
        read_annotations(files.truth, slide_shape=slide.shape),
        s,
        name=f"{slide.name} truth",
        mpp=slide.mpp,
        edge_width=width,
    )
    truth[1].update(edge_color=TRUTH_COLOUR, visible=False)
    return [image_layer_data(slide), truth, coarse]
