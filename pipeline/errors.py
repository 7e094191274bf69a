"""One exception hierarchy for everything the pipeline raises on purpose.

The CLI catches `EarthLocError` and prints its message on one line; anything else
is a bug and keeps its traceback."""


class EarthLocError(Exception):
    """Base class of the project's deliberate errors."""


class ConfigError(EarthLocError):
    """params.yaml (or a CLI flag) holds a value the pipeline cannot use."""


class InputError(EarthLocError):
    """An input file is missing, unreadable or has the wrong structure."""


class RejectedShareError(InputError):
    """More input rows were rejected than the configured share allows."""


class IntegrityError(EarthLocError):
    """A stored result disagrees with what its inputs say it should be."""


class FetchError(EarthLocError):
    """A tile source or the tile store misbehaved in a way the fetcher will not work around."""


class SourceRefusedError(FetchError):
    """The tile server keeps refusing (403/429/5xx across many tiles): stop instead of hammering it."""


class ModelError(EarthLocError):
    """A model config, checkpoint or weights file the model code cannot use."""
