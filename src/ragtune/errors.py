"""Errors a user can fix; the CLI prints them as one line instead of a traceback."""


class RagtuneError(Exception):
    """A problem with the user's input, data, model or environment, explained in words."""

    exit_code = 2


class BadRowError(RagtuneError):
    """One row of an input file is unusable; `row` says which and why, the message adds what the user can do."""

    def __init__(self, row: str, advice: str):
        super().__init__(f"{row} ({advice})")
        self.row = row


class RegressionError(RagtuneError):
    """The tuned model is not better than the base model on validation (the run itself finished)."""

    exit_code = 3

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result  # the finished run's RunResult, so a caller can still read every number
