"""The errors a call can raise.

``BackendNotAvailableError`` and ``BackendProcessingError`` behave as in
TaskIt 4.0's ``taskit.frontend``; the others say what TaskIt 4.0 could not
(a timeout, a lost connection, a stopping backend), and each is also an
instance of the built-in error it resembles.
"""

__all__ = [
    "TaskitError",
    "BackendNotAvailableError",
    "BackendProcessingError",
    "BackendStoppingError",
    "CallTimeoutError",
    "ConnectionLostError",
    "ProtocolError",
    "TlsError",
    "ResolveError",
    "UnknownBackendError",
    "DecodeError",
]


class TaskitError(Exception):
    """Base class of every error taskit_native raises for a call."""


class BackendNotAvailableError(TaskitError):
    """No backend could be reached: the call did not run."""


class BackendStoppingError(BackendNotAvailableError):
    """Every backend that could take the call is stopping: it did not run."""


class ResolveError(BackendNotAvailableError):
    """A backend name (``dns:NAME:PORT``) could not be resolved."""


class TlsError(BackendNotAvailableError, ConnectionError):
    """The TLS handshake failed (an untrusted certificate, or the host refused
    this client's)."""


class BackendProcessingError(TaskitError):
    """The task ran and raised, or the backend refused the call.

    ``type`` is the remote error's type name (``"TypeError"``, ``"KeyError"``
    for an unknown task, ``"WorkerCrashed"`` ...); ``args`` its arguments.
    """

    def __init__(self, type, args):
        super().__init__(*args)
        self.type = type
        self.args = tuple(args)

    # As TaskIt 4.0 writes them: str(e) == "('TypeError', ('message',))".
    def __str__(self):
        return str((self.type, self.args))

    def __repr__(self):
        return "%s(type=%s, args=%s)" % (type(self).__name__, self.type, self.args)


class CallTimeoutError(TaskitError, TimeoutError):
    """No reply within the call's timeout; the backend was asked to cancel."""


class ConnectionLostError(TaskitError, ConnectionError):
    """The connection broke after the call was sent: it may have run. Calls
    made with ``idempotent=True`` are retried on another backend instead."""


class ProtocolError(TaskitError):
    """The backend broke the protocol."""


class UnknownBackendError(TaskitError, ValueError):
    """The backend named is not one of this frontend's (TaskIt 4.0 raised
    ``ValueError``, which this still is)."""


class DecodeError(TaskitError, ValueError):
    """The reply could not be read."""
