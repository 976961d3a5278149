"""One error type for everything a user can fix; the CLI prints it as one line instead of a traceback."""


class RagtuneError(Exception):
    """A problem with the user's input, data, model or environment, explained in words."""
