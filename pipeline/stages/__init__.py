"""One module per dvc.yaml stage, named after it: each reads its inputs, calls the libraries
(`pipeline.geo`, `pipeline.fetch`, `earthloc`) and writes its outputs."""
