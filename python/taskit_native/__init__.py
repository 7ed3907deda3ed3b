"""Call TaskIt tasks from Python over the native protocol.

TaskIt 4.0's ``taskit.frontend`` API, on one multiplexed connection per
backend: change ``from taskit.frontend import FrontEnd`` to
``from taskit_native import FrontEnd`` and the code runs as before, faster.

    >>> from taskit_native import FrontEnd
    >>> fe = FrontEnd(["127.0.0.1:54543"])
    >>> fe.work("add", 4, 4)
    8

Beyond TaskIt 4.0: ``fe.with_options(timeout=..., idempotent=True)``,
``await fe.call(...)`` for asyncio, ``fe.tasks(backend)``,
``fe.reload(backend)``, ``admin_token=``, ``call_token=`` and TLS.
"""

from . import _errors
from ._errors import *  # noqa: F401,F403 (the errors, listed in _errors.__all__)
from ._native import DEFAULT_PORT, MAX_CALLBACK_THREADS, MAX_DEPTH, FrontEnd, __version__

__all__ = ["FrontEnd", "DEFAULT_PORT", "MAX_DEPTH", "MAX_CALLBACK_THREADS", *_errors.__all__]
