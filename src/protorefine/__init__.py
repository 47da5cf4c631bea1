"""protorefine: refine coarse tumour outlines on whole-slide images with prototypes."""

from protorefine.errors import ProtorefineError

__version__ = "0.1.0"
__all__ = ["ProtorefineError", "__version__"]
