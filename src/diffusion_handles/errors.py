"""The one exception type the command line and the web app turn into a clear message."""


class HandlesError(ValueError):
    """Bad input or an impossible request.

    The message is one line that names the argument, what was expected and what arrived, e.g.
    ``--mask: expected a PNG of size 512x384 (same as IMAGE), got 256x256``.
    """
