"""The one exception type fungilib raises for bad input: a single line naming the file, the field and the fix."""

import re

_OBJECT_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class FungilibError(Exception):
    """A user-facing error: its message is one line that says what is wrong and how to fix it."""


def plain_message(text: str, limit: int = 120) -> str:
    """A library's message as a recorded reason: its first line, without object addresses
    (``<_io.BytesIO object at 0x7f…>`` becomes "the data"), at most ``limit`` characters."""
    return _OBJECT_ADDRESS.sub("the data", text.splitlines()[0] if text else "")[:limit]
