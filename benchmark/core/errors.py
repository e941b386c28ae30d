"""Error types the CLI turns into one clear line instead of a traceback."""


class BenchmarkError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class DatasetError(BenchmarkError):
    """A dataset layout, label file or image is not what the reader expected."""


class UnknownNameError(BenchmarkError, KeyError):
    """A registry was asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would print the repr with quotes
        return str(self.args[0]) if self.args else ""
