"""One way to abandon work on an HTTP inference server: close its connection.

vLLM's OpenAI server aborts a request whose client has gone (streaming or not), so closing the
connection is how upstream work is cancelled, whatever the reason: a race that has its answer stops
its samples still running (:meth:`OpenAIBackend.generate_watched`), and ``serve.py`` abandons a request
whose client disconnected or whose deadline passed. Both go through a :class:`CancelScope`.

A scope covers the upstream calls made while it is active in a thread (``with scope.active():``);
:meth:`CancelScope.cancel`, from any thread, shuts down the sockets of the calls in flight (a thread
blocked reading a reply wakes at once), refuses new calls, and cancels the scope's children (a race's
stream is a child of its request's scope). The calls then raise :class:`Cancelled`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()  # .scope: the scope active in this thread; .conns: connections it used


class Cancelled(Exception):
    """The work was abandoned (a race stopped, the client left, the deadline passed); its upstream
    connections were closed, so the server aborted what it was generating for it."""


class CancelScope:
    def __init__(self, parent: CancelScope | None = None) -> None:
        self._lock = threading.Lock()
        self.cancelled = False
        self.reason: str | None = None
        self._conns: set[Any] = set()
        self._children: list[CancelScope] = []
        if parent is not None:
            parent._adopt(self)

    def child(self) -> CancelScope:
        """A scope cancelled with this one, and on its own (a race's stream within a request)."""
        return CancelScope(self)

    def _adopt(self, kid: CancelScope) -> None:
        with self._lock:
            if not self.cancelled:
                self._children.append(kid)
                return
        kid.cancel(self.reason or "cancelled")

    def cancel(self, reason: str = "cancelled") -> int:
        """Close every connection in flight under this scope and its children; how many there were."""
        with self._lock:
            if self.cancelled:
                return 0
            self.cancelled, self.reason = True, reason
            conns, kids = list(self._conns), list(self._children)
        closed = sum(_shutdown(c, self) for c in conns)
        return closed + sum(k.cancel(reason) for k in kids)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled(self.reason or "cancelled")

    @contextmanager
    def active(self) -> Iterator[CancelScope]:
        """The HTTP calls this thread makes inside go through this scope (first: refused if cancelled)."""
        self.check()
        prev, prev_conns = getattr(_current, "scope", None), getattr(_current, "conns", None)
        _current.scope, _current.conns = self, []
        try:
            yield self
        finally:
            used = _current.conns
            _current.scope, _current.conns = prev, prev_conns
            with self._lock:
                self._conns.difference_update(used)

    def _track(self, conn: Any) -> None:
        conn._ttc_scope = self  # a pooled connection reused by another scope's call is not ours to close
        _current.conns.append(conn)
        with self._lock:
            self._conns.add(conn)
            cancelled = self.cancelled
        if cancelled:  # cancelled while the request was being sent
            _shutdown(conn, self)


def _shutdown(conn: Any, scope: CancelScope) -> int:
    sock = getattr(conn, "sock", None)
    if sock is None or getattr(conn, "_ttc_scope", None) is not scope:
        return 0
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it; the server sees the close
    except OSError:
        return 0
    return 1


class _Scoped:
    """A urllib3 connection that registers itself with the scope active in the calling thread."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        scope: CancelScope | None = getattr(_current, "scope", None)
        if scope is not None:
            scope.check()
        super().request(*args, **kwargs)  # type: ignore[misc]
        if scope is not None:
            scope._track(self)


class _ScopedHTTPConnection(_Scoped, HTTPConnection):
    pass


class _ScopedHTTPSConnection(_Scoped, HTTPSConnection):
    pass


class _ScopedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _ScopedHTTPConnection


class _ScopedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _ScopedHTTPSConnection


class CancellableAdapter(HTTPAdapter):
    """A ``requests`` adapter whose connections a :class:`CancelScope` can close mid-call."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _ScopedHTTPPool, "https": _ScopedHTTPSPool}
