"""Commands that are not dvc.yaml stages: they inspect, export or query what the stages built."""
