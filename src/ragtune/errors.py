"""Errors a user can fix; the CLI prints them as one line instead of a traceback."""


class RagtuneError(Exception):
    """A problem with the user's input, data, model or environment, explained in words."""

    exit_code = 2


class RegressionError(RagtuneError):
    """The tuned model is not better than the base model on validation (the run itself finished)."""

    exit_code = 3

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result  # the finished run's RunResult, so a caller can still read every number
