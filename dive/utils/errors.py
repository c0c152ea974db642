"""The error type for bad input from a user.

`InputError` is a `ValueError`, so every place that already maps `ValueError` to a clear message
(the command line prints `dive: error: <message>` and exits 2) handles it. Its message is one line
that names the file and says what was expected, e.g.
``runs/a.jpg: truncated image (image file is truncated); expected a complete JPEG, PNG or BMP file``.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: a file that is missing, damaged or not what was expected. The message
    names the file and what was expected, on one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))
