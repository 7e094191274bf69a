"""Pipeline stages: thin wrappers that read inputs, call `pipeline.geo`, write outputs."""
