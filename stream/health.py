"""`/healthz` and `/readyz` on the metrics port, for an orchestrator's probes.

- `GET /healthz`: 200 while the process runs its loop (the pipeline turned within `stall_s`),
  else 503.
- `GET /readyz`: 200 once partitions are assigned, the model is loaded and the broker answered
  within the last `broker_s` (30 s), else 503.

Either way the body is one line: `ok`, or the reason. Every other path is the Prometheus
exposition, as before. The pipeline reports into a `Health` from its own thread and Kafka's; the
HTTP server's threads only read it.

>>> h = Health(clock=lambda: 100.0)
>>> h.model_loaded = True
>>> h.ready()
(False, 'no partitions assigned')
>>> h.partitions = 2
>>> h.broker_answered(); h.ready()
(True, 'ok')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

# A loop turn is a poll (at most 200 ms) plus the scoring and flush it triggers; a flush waits at
# most 30 s (pipeline.FLUSH_TIMEOUT_S). Past this the process is stuck, not busy.
STALL_S = 120.0
BROKER_S = 30.0


class Health:
    """What the probes answer: the loop's last turn, the broker's last answer, the assignment."""

    def __init__(
        self,
        stall_s: float = STALL_S,
        broker_s: float = BROKER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_s, self.broker_s, self.clock = stall_s, broker_s, clock
        self.model_loaded = False
        self.partitions = 0  # assigned to this process now
        self.stopped = False
        self._last_turn = clock()  # starting counts as a turn: loading takes a while
        self._last_answer: float | None = None

    def loop_turned(self) -> None:
        self._last_turn = self.clock()

    def broker_answered(self) -> None:
        self._last_answer = self.clock()

    def live(self) -> tuple[bool, str]:
        if self.stopped:
            return False, "the pipeline loop has stopped"
        idle = self.clock() - self._last_turn
        if idle > self.stall_s:
            return False, f"the pipeline loop has not turned for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        live, reason = self.live()
        if not live:
            return False, reason
        if not self.model_loaded:
            return False, "the model is not loaded yet"
        if self.partitions == 0:
            return False, "no partitions assigned"
        if self._last_answer is None:
            return False, "the broker has not answered yet"
        silent = self.clock() - self._last_answer
        if silent > self.broker_s:
            return False, f"the broker has not answered for {silent:.0f}s"
        return True, "ok"


def wsgi_app(registry: CollectorRegistry, health: Health | None) -> Callable:
    """/healthz and /readyz from `health`; every other path: the metrics of `registry`."""
    metrics_app = make_wsgi_app(registry)
    probes = {} if health is None else {"/healthz": health.live, "/readyz": health.ready}

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics_app(environ, start_response)
        ok, reason = probe()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [reason.encode() + b"\n"]

    return app


def serve_http(registry: CollectorRegistry, port: int, addr: str, health: Health | None) -> None:
    """The metrics port's server, on a daemon thread (as prometheus_client's own): raises
    OSError when the port cannot be bound."""
    import threading

    class Server(ThreadingWSGIServer):
        pass

    Server.address_family, addr = _get_best_family(addr, port)
    httpd = make_server(
        addr, port, wsgi_app(registry, health), Server, handler_class=_SilentHandler
    )
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
