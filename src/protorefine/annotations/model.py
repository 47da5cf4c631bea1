"""The one internal annotation form: shapely polygons (with holes) in level-0 pixels."""

from __future__ import annotations

from dataclasses import dataclass, field

from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

TUMOR = "Tumor"
NORMAL = "Normal"
EXCLUDE = "Exclusion"
#: Class of annotations that came without one (QuPath: no classification; ASAP: group "None").
UNCLASSIFIED = "Unclassified"


@dataclass
class Annotation:
    """One region: a Polygon or MultiPolygon in level-0 pixel coordinates ``(x, y)``.

    ``classification`` is the class name (QuPath's ``classification.name``, ASAP's
    group). Shapely uses ``(x, y)``; napari uses ``(y, x)``: convert at the napari edge.
    """

    geometry: Polygon | MultiPolygon
    classification: str = TUMOR
    name: str | None = None
    properties: dict = field(default_factory=dict)
    #: Stable object id (QuPath's feature ``id``, a UUID); writers make one when None.
    id: str | None = None


@dataclass
class AnnotationSet:
    """All annotations of one slide, with the warnings raised while reading them."""

    annotations: list[Annotation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self):
        return iter(self.annotations)

    def classes(self) -> list[str]:
        """Class names present, in first-seen order."""
        seen: dict[str, None] = {}
        for a in self.annotations:
            seen.setdefault(a.classification, None)
        return list(seen)

    def union(self, classes: list[str] | None = None) -> BaseGeometry:
        """Union of the geometries whose class is in ``classes`` (all when ``None``)."""
        geoms = [
            a.geometry for a in self.annotations if classes is None or a.classification in classes
        ]
        return unary_union(geoms) if geoms else Polygon()
