"""PostgreSQL for the tests: the server on 127.0.0.1:5432 (``TINY_DANCER_TEST_PG`` overrides the URL),
a fresh schema per test, dropped afterwards, and a TCP relay a test can cut to make the database
unreachable for a while.  Tests skip, saying why, when no server answers or psycopg is missing;
with ``TINY_DANCER_REQUIRE_SERVICES=1`` (set by ``.ci/run`` on machines that run the services) they
fail instead, so a CI run cannot pass with the PostgreSQL code untested."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote

import pytest

PG_URL = os.environ.get("TINY_DANCER_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

#: set to 1 where the services must be there (CI on a machine that runs them): a missing one fails the test
REQUIRE_SERVICES = "TINY_DANCER_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(REQUIRE_SERVICES, "").strip().lower() in ("1", "true", "yes")


def service_unavailable(reason: str) -> None:
    """Skip the test, saying why, or fail it when the services are required."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVICES}=1: a service test must not skip here)", pytrace=False)
    pytest.skip(reason)


def require_postgres() -> Any:
    try:
        import psycopg
    except ImportError:
        psycopg = None
    if psycopg is None:
        service_unavailable("PostgreSQL tests need psycopg 3 (pip install 'psycopg[binary,pool]')")
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
        return psycopg
    except psycopg.Error as exc:
        problem = f"no PostgreSQL server answers at {PG_URL}: {str(exc).strip()}"
    service_unavailable(problem)  # outside the except: the report is the reason, not a chained traceback


def new_schema() -> str:
    return f"td_test_{uuid.uuid4().hex[:12]}"


def schema_url(schema: str, url: str = PG_URL) -> str:
    """The URL that puts a connection's tables in ``schema`` (libpq's options parameter)."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A new empty schema (created, then dropped with everything in it)."""
    psycopg = require_postgres()
    schema = new_schema()
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield schema
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


class Relay:
    """A TCP relay on 127.0.0.1 to the PostgreSQL server; :meth:`cut` drops every connection and
    refuses new ones (the database "goes away"), :meth:`restore` lets them through again.

    :meth:`blackhole` is the silent outage (packets dropped, nothing refused): no byte passes, no
    socket is closed, new connections are accepted and never answered.  The connections open
    then stay dead after :meth:`restore` (as behind a firewall or NAT that forgot them): only new
    ones work again.  The relay's kernel still acknowledges every segment, so TCP keepalives and
    ``tcp_user_timeout`` cannot see this outage: only the application's own deadlines can."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.target = (host, port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = True
        self.silent = False
        self.sockets: list[socket.socket] = []
        self.held: list[socket.socket] = []  # accepted during a blackhole, never answered
        self.dead: set[socket.socket] = set()  # open when the blackhole began: never forwarded again
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, schema: str) -> str:
        return schema_url(schema, PG_URL.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}"))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            if self.silent:
                with self.lock:
                    self.held.append(client)
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                if a in self.dead or b in self.dead:
                    continue  # swallowed: the peer never hears of it
                b.sendall(data)
        except OSError:
            pass
        if a in self.dead or b in self.dead:
            return  # a dead connection is not closed either: nobody tells the peer
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.open = True
        self.silent = False
        with self.lock:
            for s in self.held:
                s.close()
            self.held.clear()

    def blackhole(self) -> None:
        """Drop every byte from now on, on every open connection (for good) and on new ones (until
        :meth:`restore`), without closing anything."""
        with self.lock:
            self.silent = True
            self.dead.update(self.sockets)

    def close(self) -> None:
        self.dead.clear()
        self.cut()
        self.restore()
        self.server.close()
