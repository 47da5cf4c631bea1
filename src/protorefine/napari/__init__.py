"""napari face of protorefine: reader, writer, sample data and dock widgets (the only Qt/napari code)."""
