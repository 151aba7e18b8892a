"""Errors that carry a one-line message meant for the person who ran the job."""

import re

_LOCAL_PATH = re.compile(r"(?<![\w./~-])/(?:[^\s'\"`:,;()\[\]<>/]+/)+([^\s'\"`:,;()\[\]<>/]*)")


class PipelineError(Exception):
    """A failure with a message fit to show as it is (no traceback)."""


class InvalidInputError(PipelineError):
    """The input is not a video we can style; retrying will not help."""


class BatchFailedError(PipelineError):
    """A batch could not be scored within its attempts."""


def public(text: str) -> str:
    """``text`` fit to show to a caller of the service: a local file's path (``/tmp/split-x1/input.mp4``) becomes its
    last part (``input.mp4``), so that no scratch or cache path of a worker or of the app is shown; logs keep them."""
    return _LOCAL_PATH.sub(lambda match: match.group(1) or "(folder)", text)
