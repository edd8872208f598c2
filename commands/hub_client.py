"""The commands' Hub client: timeouts on every request, and the network failures to report in one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session

from .errors import error_summary

# The HTTP library's error base class (httpx's under huggingface_hub 1.x, httpx2's under 2.x), which its network
# failures (refused connection, timeout) derive from: they are not OSError, unlike HfHubHTTPError.
HUB_NETWORK_ERROR = next(base for base in HfHubHTTPError.__mro__[1:] if base.__name__ == "HTTPError")


@contextlib.contextmanager
def hub_timeout(seconds: float | None = None) -> Iterator[float]:
    """Connect, read and write timeouts on every request of the shared Hub client (which has none by default, so a
    server that accepts and never answers would hang a push forever); default `HF_HUB_DOWNLOAD_TIMEOUT`, which
    huggingface_hub documents as the timeout of its other requests. Restored afterwards."""
    seconds = float(seconds or constants.HF_HUB_DOWNLOAD_TIMEOUT)
    session = get_session()
    previous = session.timeout
    session.timeout = type(previous)(seconds)  # the client library's own Timeout class
    try:
        yield seconds
    finally:
        session.timeout = previous


def describe_hub_failure(error: Exception, timeout: float) -> str:
    """One line for a failed Hub call: what the server said, or which network failure stopped it."""
    endpoint = constants.ENDPOINT
    if isinstance(error, HUB_NETWORK_ERROR) and not isinstance(error, HfHubHTTPError):
        if "Timeout" in type(error).__name__:
            return f"no answer from {endpoint} within {timeout:g} s ({type(error).__name__}; see --timeout)"
        return f"cannot reach {endpoint} ({type(error).__name__}: {error_summary(error)})"
    return error_summary(error)


__all__ = ["HUB_NETWORK_ERROR", "describe_hub_failure", "hub_timeout"]
