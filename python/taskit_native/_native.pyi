"""Type stubs of the compiled module (the Rust frontend, wrapped)."""

import asyncio
from os import PathLike
from typing import Any, Callable, Iterable, Literal, Optional, Union

Backend = Union[str, tuple[str, int]]
"""``"host"``, ``"host:port"``, ``"dns:NAME[:PORT]"`` or ``(host, port)``."""

JSON = Any
"""None, bool, int (64 bits), float (finite), str, list, tuple, dict: what
JSON carries. bytes raise TypeError."""

DEFAULT_PORT: int
MAX_DEPTH: int
MAX_CALLBACK_THREADS: int
__version__: str

class FrontEnd:
    """Calls tasks by id on one or many backends (TaskIt 4.0's FrontEnd)."""

    def __init__(
        self,
        backends: Iterable[Backend] = (),
        default_port: int = ...,
        logger: Any = None,
        codec: Union[None, Literal["json"], type] = None,
        *,
        protocol: Literal["native", "taskit4"] = "native",
        timeout: Optional[float] = None,
        idempotent: bool = False,
        admin_token: Optional[str] = None,
        call_token: Optional[str] = None,
        connect_timeout: float = 5.0,
        max_reply: Optional[int] = None,
        discover_names: bool = False,
        resolve_every: float = 5.0,
        tls: bool = False,
        tls_ca: Optional[list[Union[str, PathLike[str]]]] = None,
        tls_cert: Optional[Union[str, PathLike[str]]] = None,
        tls_key: Optional[Union[str, PathLike[str]]] = None,
        tls_server_name: Optional[str] = None,
    ) -> None: ...
    def with_options(
        self, *, timeout: Optional[float] = ..., idempotent: bool = ...
    ) -> "FrontEnd":
        """A view with other call options, sharing connections and counts."""
    def work(self, task: str, *args: JSON, **kwargs: JSON) -> JSON:
        """Calls the task and waits for its result (GIL released)."""
    def callback(
        self,
        task: str,
        cb: Callable[[JSON], Any],
        error_cb: Union[None, Literal[False], Callable[[Exception], Any]],
        *args: JSON,
        **kwargs: JSON,
    ) -> None:
        """Calls without waiting; cb or error_cb runs on another thread."""
    def ignore(self, task: str, *args: JSON, **kwargs: JSON) -> None:
        """Calls and forgets: result and error are dropped."""
    def call(self, task: str, *args: JSON, **kwargs: JSON) -> "asyncio.Future[JSON]":
        """For asyncio: ``await fe.call(task, ...)``."""
    def map(
        self,
        task: str,
        iterable: Iterable[JSON],
        *,
        in_flight: int = 1024,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``task(item)`` for each item, many in flight; results in order."""
    def starmap(
        self,
        task: str,
        iterable: Iterable[Union[tuple[JSON, ...], list[JSON]]],
        *,
        in_flight: int = 1024,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """``task(*item)`` for each item, many in flight; results in order."""
    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Waits for callback and ignore calls to finish."""
    def add_backends(self, *backends: Backend) -> None:
        """More backends; the frontend starts over with new connections."""
    def get_tasks(self, backend: Backend) -> str:
        """The backend's running-task count as a string, or ``"down"``."""
    def send_stop(self, backend: Backend) -> None: ...
    def send_kill(self, backend: Backend) -> None: ...
    def send_signal(
        self,
        backend: Backend,
        signal: Literal["<status>", "<tasks>", "<reload>", "<stop>", "<kill>"],
    ) -> Any: ...
    def tasks(self, backend: Backend) -> list[dict[str, Any]]:
        """The plugins a backend serves, with their task ids."""
    def reload(self, backend: Backend) -> dict[str, Any]:
        """Rescans the backend's plugins now: loaded, refused, removed, unchanged."""
    def routes(self) -> list[dict[str, Any]]:
        """Backends routed to now, with this client's in_flight and answered."""
    @property
    def backends(self) -> list[tuple[str, int]]: ...
    @property
    def timeout(self) -> Optional[float]: ...
    @property
    def idempotent(self) -> bool: ...

class LoopBridge:
    def fileno(self) -> int: ...
    def drain(self) -> None: ...
