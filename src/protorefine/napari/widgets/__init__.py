"""Dock widgets: project and slides, coarse annotation, prototypes, refine and train, review and export."""
