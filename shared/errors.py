"""Errors that carry a one-line message meant for the person who ran the job."""


class PipelineError(Exception):
    """A failure with a message fit to show as it is (no traceback)."""


class InvalidInputError(PipelineError):
    """The input is not a video we can style; retrying will not help."""


class BatchFailedError(PipelineError):
    """A batch could not be scored within its attempts."""
