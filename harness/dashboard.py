"""optuna-dashboard behind the protection MLflow's own server has: `python -m harness.dashboard`.

optuna-dashboard checks neither the Host header nor the Origin of a request. A web page on any
site could then reach a dashboard bound to 127.0.0.1 through DNS rebinding (its name re-pointed at
127.0.0.1, so the browser sends `Host: evil.example`) and delete studies through its REST API.
Served here instead, the dashboard answers only when

- the Host header names a loopback address (localhost, 127.0.0.1, [::1]) or the bound address,
  with or without the port (MLflow's `is_allowed_host_header`), and
- a request that changes state (POST, PUT, DELETE, PATCH) carries no Origin, or a loopback or
  bound-address Origin (MLflow's `should_block_cors_request`).

Everything else gets 403. The storage URL comes from ABLATE_STORAGE (harness.tracking.storage), never from
the command line, where `ps` would show its password to every user of the machine.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from mlflow.server.security_utils import is_allowed_host_header, should_block_cors_request

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
WILDCARD = ("0.0.0.0", "::", "")


def allowed_hosts(host: str, port: int) -> list[str]:
    """Host header values served: loopback names and the bound address, bare or with `port`.

    Bound to every interface (0.0.0.0), the bound address is this machine's names.
    """
    names = list(LOOPBACK)
    bound = [socket.gethostname(), socket.getfqdn()] if host in WILDCARD else [host]
    names += [f"[{h}]" if ":" in h and not h.startswith("[") else h for h in bound]
    unique = list(dict.fromkeys(names))
    return unique + [f"{h}:{port}" for h in unique]


def guard(app: WSGIApp, hosts: list[str]) -> WSGIApp:
    """`app` answering 403 to a foreign Host header and to a cross-origin state change."""
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "")
        if not is_allowed_host_header(hosts, host):
            return _forbidden(start_response, f"Host {host!r} is not served here (DNS rebinding?)")
        origin = environ.get("HTTP_ORIGIN", "")
        if should_block_cors_request(origin, environ.get("REQUEST_METHOD", "GET"), origins):
            return _forbidden(start_response, f"cross-origin request from {origin!r} refused")
        return app(environ, start_response)

    return guarded


def _forbidden(start_response: Callable[..., Any], why: str) -> list[bytes]:
    body = why.encode()
    start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(body)))])
    return [body]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    """Serve the dashboard of the study storage (ABLATE_STORAGE, else the project's journal)."""
    from optuna_dashboard import wsgi

    from harness.core.errors import UsageError
    from harness.tracking.storage import default_storage, open_storage

    parser = argparse.ArgumentParser(prog="python -m harness.dashboard")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    try:
        storage = open_storage(default_storage())
    except UsageError as exc:
        print(f"ablate: error: {exc}", file=sys.stderr)
        return 2
    app = guard(wsgi(storage), allowed_hosts(args.host, args.port))
    with make_server(args.host, args.port, app, server_class=_ThreadingServer) as server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
