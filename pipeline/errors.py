"""The two user-error types: every stage turns them into one line and exit status 2
(:func:`pipeline.cli.stage_main`). They live below every other module, so that the params loader
and the file helpers can both raise them."""


class ConfigError(ValueError):
    """Invalid params.yaml: the message names the key and the allowed values."""


class InputError(ValueError):
    """An input file (annotations, features, checkpoint, weights) cannot be used; the message
    names the file and the reason."""
