"""EarthLoc: the command line and, later, the retrieval model that consumes the
pipeline's outputs."""
