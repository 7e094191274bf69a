"""EarthLoc: the retrieval model that localises astronaut photos against the pipeline's
Sentinel-2 database (model, loss, training, evaluation, localisation) and the `earthloc`
command line that runs every pipeline stage (see dvc.yaml)."""
