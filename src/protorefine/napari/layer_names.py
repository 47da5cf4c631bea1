"""Names of the napari layers protorefine shows over the current slide.

One small module that :mod:`protorefine.napari.layers`, :mod:`protorefine.napari.state`
and :mod:`protorefine.napari.colormaps` all import (none of them imports another for a name).
"""

from __future__ import annotations

#: Names of the patch-grid layers the widgets show over the current slide.
LOCAL_PROTOTYPES = "local prototypes"
GLOBAL_PROTOTYPES = "global prototypes"
PSEUDO_LABELS = "pseudo-labels"
REFINED = "refined"
CONFIDENCE = "confidence"
#: The classifier's tumour probability per patch, drawn so the unsure band stands out.
PROBABILITY = "tumour probability"
CORRECTIONS = "corrections"
GRID_LAYERS = (
    LOCAL_PROTOTYPES,
    GLOBAL_PROTOTYPES,
    PSEUDO_LABELS,
    REFINED,
    CONFIDENCE,
    PROBABILITY,
    CORRECTIONS,
)
#: Grid layers shown as float images (the others are Labels).
IMAGE_GRID_LAYERS = (CONFIDENCE, PROBABILITY)
#: The pixel stage's tumour probability per dense cell (a few µm), an Image layer of its own grid.
PIXEL_PROBABILITY = "pixel tumour probability"
#: The pixel stage's first pass, which its self-training learnt from (for inspection).
PIXEL_PSEUDO = "pixel pseudo-mask"
#: The pixel stage's layers, each on its own cell grid, hidden until the user shows them.
PIXEL_LAYERS = (PIXEL_PROBABILITY, PIXEL_PSEUDO)
#: Result layers that stay hidden until asked for (the Review pane's "Show where the model
#: is unsure", the pixel stage's maps); the others show when their results arrive.
HIDDEN_UNTIL_ASKED = (PROBABILITY, *PIXEL_LAYERS)

#: Name of the coarse-annotation Shapes layer of the current slide.
COARSE = "coarse"
#: Shapes layer with the refined polygons (what is exported).
REFINED_OUTLINE = "refined outline"
#: Layers created empty and hidden when a slide is shown, filled in place when results arrive.
PLACEHOLDER_LAYERS = (*GRID_LAYERS, *PIXEL_LAYERS, REFINED_OUTLINE)
#: Appended to a placeholder's name in the layer list, so nobody mistakes it for a result.
PLACEHOLDER_SUFFIX = " (no results yet)"

__all__ = [
    "COARSE",
    "CONFIDENCE",
    "CORRECTIONS",
    "GLOBAL_PROTOTYPES",
    "GRID_LAYERS",
    "HIDDEN_UNTIL_ASKED",
    "IMAGE_GRID_LAYERS",
    "LOCAL_PROTOTYPES",
    "PLACEHOLDER_LAYERS",
    "PIXEL_LAYERS",
    "PIXEL_PROBABILITY",
    "PIXEL_PSEUDO",
    "PLACEHOLDER_SUFFIX",
    "PROBABILITY",
    "PSEUDO_LABELS",
    "REFINED",
    "REFINED_OUTLINE",
]
