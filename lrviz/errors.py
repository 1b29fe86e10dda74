"""Error type for bad user input.

Every error that a user can cause (wrong file, wrong architecture, impossible rank, unsupported layer)
is raised as :class:`LrvizError`, a ``ValueError``, with a message that says what was given, what is
allowed and how to fix it. The CLI turns it into one line on stderr and exit code 2.
"""


class LrvizError(ValueError):
    """Bad user input; the message is meant for the user."""
