"""One exception type for every user-facing mistake.

The CLI prints `error: <message>` on one line and exits with status 2; the message names the problem
and the fix. Anything else that escapes is a bug and keeps its traceback.
"""


class SlmError(Exception):
    """A problem with the user's input or environment, with a one-line message that says how to fix it."""
