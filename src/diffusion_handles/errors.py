"""The one exception type the command line and the web app turn into a clear message."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of ``e``'s message (at most ``limit`` characters), or its type name."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]


class HandlesError(ValueError):
    """Bad input or an impossible request.

    The message is one line that names the argument, what was expected and what arrived, e.g.
    ``--mask: expected a PNG of size 512x384 (same as IMAGE), got 256x256``.
    """


class Cancelled(HandlesError):
    """The run was asked to stop (a cancel flag, Ctrl-C, the page's Cancel button) and stopped
    at the end of a step; nothing was cached or written. The message says where it stopped,
    e.g. ``cancelled during guided generation 12/50``."""
