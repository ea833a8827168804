"""The one exception type that means "the user's input is wrong": the CLI prints it and exits 2."""


class UsageError(Exception):
    """Bad input: a config key, a value, a spec, a file or a storage URL.

    The message is one line naming what is wrong and what is allowed. Raised before anything
    is written to the MLflow store or the study storage.
    """
