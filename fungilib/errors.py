"""The one exception type fungilib raises for bad input: a single line naming the file, the field and the fix."""


class FungilibError(Exception):
    """A user-facing error: its message is one line that says what is wrong and how to fix it."""
