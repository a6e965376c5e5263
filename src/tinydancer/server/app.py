"""The HTTP service: route, record every decision and its outcome, expose health, metrics and admin.

Routes (all handlers ``async def``; the OpenAPI schema is at ``/openapi.json``)

    POST /v1/route           candidate scoring (the seed's request/response, plus request_id)
    POST /v1/route/query     model-tier routing from text or an embedding
    POST /v1/feedback        {"request_id", "success", "quality"?, "candidate_id"?, "cost"?}; unknown id → 404
    GET  /health             liveness
    GET  /health/ready       503 until a model is loaded
    GET  /metrics            Prometheus text, names starting tiny_dancer_
    GET  /info               versions, model, storage
    POST /admin/reload       reload the model file (validated; a bad file keeps the old model)
    GET|PUT /admin/config    live thresholds, validated (422 on a bad value)
    GET  /admin/circuit-breaker, POST /admin/circuit-breaker/reset
    GET  /admin/stats        totals, averages, p50/p95/p99 from the stored decisions

Admin routes need ``Authorization: Bearer <token>`` when a token is configured
(``TINY_DANCER_AUTH_TOKEN``); the comparison is constant-time and the token is never logged.
Bad JSON, NaN/Inf and out-of-range values get 422, oversized bodies 413 — never a 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from pydantic.json_schema import models_json_schema
from pydantic_core import to_json

from .. import __version__
from .._validation import as_float_array
from ..circuit import BreakerState
from ..errors import TinyDancerError, ValidationError
from ..llm.memory import query_key
from ..candidates import Router, RouterConfig, RoutingRequest, default_model_path
from .storage import (
    DecisionRow,
    DecisionWriter,
    SQLiteStorage,
    UnknownRequestError,
    decision_record,
    decision_tuples,
    new_request_id,
    open_storage,
)
from .wire import MAX_DIM, RouteBody, RouteIn, Strict, decode_route_body

log = logging.getLogger("tinydancer.service")


@dataclass
class ServiceSettings:
    model_path: Path = field(default_factory=default_model_path)
    database_path: Path = Path("tinydancer.db")
    query_router_path: Path | None = None
    auth_token: str | None = field(default_factory=lambda: os.environ.get("TINY_DANCER_AUTH_TOKEN") or None)
    #: poll the model file this often and hot-reload when it changes (0 disables)
    watch_interval_s: float = 1.0
    max_body_bytes: int = 2 * 1024 * 1024
    confidence_threshold: float = 0.85
    max_uncertainty: float = 0.15
    enable_quantization: bool = True
    #: share of /v1/route/query requests sent to a model drawn at random, so that retraining
    #: learns about models the router would not pick (0: never explore)
    query_exploration: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.query_exploration <= 1.0:
            raise ValidationError(f"query_exploration must be in [0, 1], got {self.query_exploration}")


# ---------------------------------------------------------------------- schemas (RouteIn: see wire.py)
class DecisionOut(BaseModel):
    candidate_id: str
    confidence: float | None = Field(description="null when the model produced a non-finite score")
    use_lightweight: bool
    uncertainty: float | None = Field(description="conformal p-value of the other label; null if uncalibrated")


class RouteOut(BaseModel):
    request_id: str
    decisions: list[DecisionOut]
    inference_time_us: float
    candidates_processed: int
    feature_time_us: float
    model_version: str
    calibrated: bool
    fallback: bool
    fallback_reason: str | None = None


class QueryIn(Strict):
    query: str | None = Field(None, min_length=1, max_length=100_000)
    embedding: list[float] | None = Field(None, min_length=1, max_length=MAX_DIM)


class QueryOut(BaseModel):
    request_id: str
    model: str
    predicted_quality: float
    cost: float
    runner_up: str
    runner_up_quality: float
    runner_up_cost: float
    strong_score: float | None = None
    latency_us: float
    explored: bool = Field(False, description="sent to a model drawn at random (exploration), not the router's choice")


class FeedbackIn(Strict):
    request_id: str = Field(min_length=1, max_length=64)
    success: bool
    quality: float | None = Field(None, ge=0.0, le=1.0)
    candidate_id: str | None = Field(None, min_length=1, max_length=256)
    cost: float | None = Field(None, ge=0.0)


class FeedbackOut(BaseModel):
    status: str
    request_id: str
    target: str


class ConfigIn(Strict):
    confidence_threshold: float | None = Field(None, ge=0.0, le=1.0)
    max_uncertainty: float | None = Field(None, ge=0.0, le=1.0)


class ConfigOut(BaseModel):
    confidence_threshold: float
    max_uncertainty: float
    enable_circuit_breaker: bool
    circuit_breaker_threshold: int
    enable_quantization: bool
    fallback_on_open: bool


class ReloadIn(Strict):
    model_path: str | None = Field(None, min_length=1, max_length=4096)


class ReloadOut(BaseModel):
    status: str
    model_version: str
    sha256: str
    model_path: str


class BreakerOut(BaseModel):
    enabled: bool
    state: str | None = None
    consecutive_failures: int | None = None
    failure_threshold: int | None = None
    trips: int | None = None
    reset_timeout_s: float | None = None
    retry_in_s: float | None = None


# ---------------------------------------------------------------------- metrics
class BatchHistogram:
    """A Prometheus histogram fed many values in one call (one ``searchsorted``).

    prometheus_client's Histogram takes one value and one lock per call; ten candidates' confidences
    and uncertainties made twenty calls per request.  Optionally one series per label value.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry,
                 labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self._edges = np.asarray(sorted(buckets), dtype=np.float64)
        # per label values: counts per bucket (the last: above every edge, +Inf) and the sum
        self._series: dict[tuple[str, ...], tuple[np.ndarray, list[float]]] = {}
        if not self.labelnames:
            self._series[()] = (np.zeros(len(self._edges) + 1, dtype=np.int64), [0.0])
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float] | np.ndarray, *labelvalues: str) -> None:
        v = np.asarray(values, dtype=np.float64)
        if not np.isfinite(v.sum()):
            v = v[np.isfinite(v)]
        if not v.size:
            return
        counts = np.bincount(np.searchsorted(self._edges, v, side="left"), minlength=len(self._edges) + 1)
        with self._lock:
            series = self._series.setdefault(labelvalues, (np.zeros(len(self._edges) + 1, dtype=np.int64), [0.0]))
            series[0][:] += counts
            series[1][0] += float(v.sum())

    def collect(self) -> Any:
        with self._lock:
            snapshot = [(key, np.cumsum(counts).tolist(), total[0]) for key, (counts, total) in sorted(self._series.items())]
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [repr(float(e)) for e in self._edges.tolist()]
        for key, cumulative, total in snapshot:
            family.add_metric(list(key), list(zip(edges, cumulative[:-1])) + [("+Inf", cumulative[-1])], sum_value=total)
        yield family


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app).

    ``POST /v1/route`` does not update them itself: seven updates, each behind a lock, cost ~25 µs
    of a ~450 µs request.  It appends one tuple (:meth:`route_done`), and the tuples are folded in
    as arrays every ``FOLD_EVERY`` requests and before every scrape, so ``/metrics`` is exact.
    """

    FOLD_EVERY = 256

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tiny_dancer_requests", "Requests served", ["endpoint"], registry=r)
        self.routes = Counter("tiny_dancer_routes", "Routing decisions", ["decision"], registry=r)
        self.errors = Counter("tiny_dancer_errors", "Requests that failed", ["endpoint", "kind"], registry=r)
        self.fallbacks = Counter("tiny_dancer_fallbacks", "Responses answered by the safe fallback", registry=r)
        self.breaker_trips = Counter("tiny_dancer_circuit_breaker_trips", "Times the circuit breaker opened", registry=r)
        self.breaker_state = Gauge("tiny_dancer_circuit_breaker_state", "0 closed, 1 half-open, 2 open", registry=r)
        self.reloads = Counter("tiny_dancer_model_reloads", "Model reloads", ["result"], registry=r)
        self.feedback = Counter("tiny_dancer_feedback", "Outcomes recorded", ["success"], registry=r)
        self.latency = BatchHistogram("tiny_dancer_request_latency_seconds", "Handler latency",
                                      (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 1.0), r, ["endpoint"])
        self.inference = BatchHistogram("tiny_dancer_inference_latency_seconds", "Router.route() time",
                                        (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3), r)
        prob = tuple(np.round(np.linspace(0.1, 1.0, 10), 2).tolist())
        self.confidence = BatchHistogram("tiny_dancer_confidence", "Decision confidence", prob, r)
        self.uncertainty = BatchHistogram("tiny_dancer_uncertainty", "Decision uncertainty", prob, r)
        self.model_info = Gauge("tiny_dancer_model_loaded", "1 when a model is being served", ["version"], registry=r)
        self.explorations = Counter("tiny_dancer_query_explorations", "Queries sent to a random model", registry=r)
        self._routes: list[tuple[int, int, bool, float, float, np.ndarray, np.ndarray | None]] = []

    def route_done(self, n: int, n_light: int, fallback: bool, inference_s: float, latency_s: float,
                   confidence: np.ndarray, uncertainty: np.ndarray | None) -> None:
        """Record one POST /v1/route (call from the event loop's thread)."""
        self._routes.append((n, n_light, fallback, inference_s, latency_s, confidence, uncertainty))
        if len(self._routes) >= self.FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Fold the recorded routes into the Prometheus metrics."""
        routes, self._routes = self._routes, []
        if not routes:
            return
        n, light, fallback, inference, latency, conf, unc = zip(*routes)
        self.requests.labels("/v1/route").inc(len(routes))
        self.routes.labels("lightweight").inc(sum(light))
        self.routes.labels("powerful").inc(sum(n) - sum(light))
        if any(fallback):
            self.fallbacks.inc(sum(fallback))
        self.inference.observe_many(inference)
        self.latency.observe_many(latency, "/v1/route")
        self.confidence.observe_many(np.concatenate(conf))
        known = [u for u in unc if u is not None]
        if known:
            self.uncertainty.observe_many(np.concatenate(known))


STATE_CODE = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationErrorOut(BaseModel):
    detail: list[ErrorItem]


def _decode(raw: bytes) -> RouteBody:
    """Decode a /v1/route body (see :mod:`tinydancer.wire`); schema errors become the declared 422 shape."""
    try:
        return decode_route_body(raw)
    except PydanticValidationError as exc:
        raise HTTPException(422, [{"loc": ["body", *e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
                                  for e in exc.errors(include_input=False, include_context=False)]) from None


def _explore(router: Any, embedding: np.ndarray, text: str | None, chosen: Any, index: int) -> Any:
    """The decision for model ``index`` instead of the router's choice, which becomes the runner-up."""
    from ..llm.query_router import RouteDecision

    quality = router.outputs_for(embedding, text)[: len(router.models)].tolist()
    return RouteDecision(model=router.models[index], predicted_quality=quality[index], cost=float(router.costs[index]),
                         runner_up=chosen.model, runner_up_quality=chosen.predicted_quality, runner_up_cost=chosen.cost,
                         strong_score=chosen.strong_score)


def unprocessable(message: str, loc: tuple[str, ...] = ("body",)) -> HTTPException:
    """A 422 in the shape the OpenAPI schema declares for 422 (a list of {loc, msg, type})."""
    return HTTPException(422, [{"loc": list(loc), "msg": message, "type": "value_error"}])


# ---------------------------------------------------------------------- app
class Service:
    """State shared by the handlers: router, query router, storage, metrics."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.storage: SQLiteStorage = open_storage(settings.database_path, checkpoint_interval_s=1.0)
        self.writer = DecisionWriter(self.storage)  # replaced at each lifespan start if it was closed
        self.router: Router | None = None
        self.not_ready_reason = "no model loaded yet"
        self.query_router: Any = None
        self.started = time.time()
        self.rng = np.random.default_rng()  # exploration draws
        self._seen_stat: tuple[int, int] | None = None
        self._seen_query_stat: tuple[int, int] | None = None
        self._try_load()
        if settings.query_router_path is not None:
            self.reload_query_router()

    def _try_load(self) -> None:
        s = self.settings
        try:
            router = Router(RouterConfig(model_path=s.model_path, confidence_threshold=s.confidence_threshold,
                                         max_uncertainty=s.max_uncertainty, enable_quantization=s.enable_quantization))
        except TinyDancerError as exc:
            self.not_ready_reason = str(exc)
            log.warning("not ready: %s", exc)
            return
        self._attach_breaker(router)
        self.router = router
        self._seen_stat = self._stat()
        self.metrics.model_info.labels(router.served.version).set(1)

    def _attach_breaker(self, router: Router) -> None:
        if router.breaker is not None:
            def on_change(state: BreakerState) -> None:
                self.metrics.breaker_state.set(STATE_CODE[state])
                if state is BreakerState.OPEN:
                    self.metrics.breaker_trips.inc()
            router.breaker.on_state_change = on_change

    def _stat(self, path: Path | None = None) -> tuple[int, int] | None:
        try:
            st = os.stat(path or self.settings.model_path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _query_router_file(self) -> Path | None:
        from ..llm.query_router import ROUTER_FILE

        path = self.settings.query_router_path
        return None if path is None else (path / ROUTER_FILE if path.is_dir() else path)

    def reload_query_router(self) -> Any:
        """(Re)load the query router file; a bad file raises and the old router keeps serving."""
        from ..llm.query_router import QueryRouter

        file = self._query_router_file()
        if file is None:
            raise TinyDancerError("no query router configured (--query-router DIR)")
        stat = self._stat(file)
        new = QueryRouter.load(file)
        old = self.query_router
        if old is not None and old._embedder is not None and old.embedder_id == new.embedder_id:
            new.embedder = old.embedder  # keep the loaded embedder: a fresh one would load MiniLM again
        self.query_router = new
        self._seen_query_stat = stat
        return new

    def reload(self, path: str | None = None) -> Any:
        """Reload (or first load); raises on a bad file and keeps the old model."""
        if self.router is None:
            if path is not None:
                self.settings.model_path = Path(path)
            self._try_load()
            if self.router is None:
                self.metrics.reloads.labels("failed").inc()
                raise TinyDancerError(self.not_ready_reason)
            self.metrics.reloads.labels("ok").inc()
            return self.router.served
        old = self.router.served.version
        try:
            served = self.router.reload_model(path)
        except TinyDancerError:
            self.metrics.reloads.labels("failed").inc()
            raise
        if path is not None:
            self.settings.model_path = Path(path)
        self._seen_stat = self._stat()
        self.metrics.reloads.labels("ok").inc()
        self.metrics.model_info.labels(old).set(0)
        self.metrics.model_info.labels(served.version).set(1)
        return served

    async def watch(self) -> None:
        """Hot-reload when the model or query router file changes (e.g. a promoted retrain replaced it)."""
        interval = self.settings.watch_interval_s
        while True:
            await asyncio.sleep(interval)
            stat = self._stat()
            if stat is not None and stat != self._seen_stat:
                try:
                    await asyncio.to_thread(self.reload)
                    log.info("reloaded %s", self.settings.model_path)
                except TinyDancerError as exc:
                    self._seen_stat = stat  # do not retry the same broken file every second
                    log.warning("model file changed but did not load: %s", exc)
            query_file = self._query_router_file()
            stat = None if query_file is None else self._stat(query_file)
            if stat is not None and stat != self._seen_query_stat:
                try:
                    await asyncio.to_thread(self.reload_query_router)
                    self.metrics.reloads.labels("ok").inc()
                    log.info("reloaded query router %s", query_file)
                except TinyDancerError as exc:
                    self._seen_query_stat = stat
                    self.metrics.reloads.labels("failed").inc()
                    log.warning("query router file changed but did not load: %s", exc)


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _reject(send, 413, f"request body over {self.limit} bytes")
                    return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _reject(send, 413, f"request body over {self.limit} bytes")


class _TooLarge(Exception):
    pass


async def _reject(send: Callable[[dict], Awaitable[None]], status: int, detail: str) -> None:
    body = ('{"detail": "%s"}' % detail).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if service.writer.closed:
            service.writer = DecisionWriter(service.storage)
        task = asyncio.create_task(service.watch()) if settings.watch_interval_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            service.writer.close()
            service.storage.close()

    app = FastAPI(title="Tiny Dancer", version=__version__, lifespan=lifespan,
                  description="FastGRNN routing: which candidate or model should each request go to.")
    app.state.service = service
    m = service.metrics
    generated_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the models of bodies we parse ourselves (RouteIn, CandidateIn)."""
        if app.openapi_schema is None:
            spec = generated_openapi()
            _, defs = models_json_schema([(RouteIn, "validation")], ref_template="#/components/schemas/{model}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]

    async def require_admin(request: Request) -> None:
        token = settings.auth_token
        if not token:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            m.errors.labels(request.url.path, "unauthorized").inc()
            raise HTTPException(401, "admin routes need Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})

    admin = [Depends(require_admin)]

    def ready_router() -> Router:
        if service.router is None:
            raise HTTPException(503, f"not ready: {service.not_ready_reason}")
        return service.router

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the offending input; a NaN there would make the error itself
        # unserializable (a 500).  Report where and why, not the value.
        m.errors.labels(request.url.path, "validation").inc()
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> JSONResponse:
        m.errors.labels(request.url.path, "validation").inc()
        return JSONResponse({"detail": [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]}, status_code=422)

    # ------------------------------------------------------------------ routing
    @app.post(
        "/v1/route",
        response_model=RouteOut,
        summary="Score candidates for a query",
        # the body is read raw and parsed by pydantic's Rust JSON parser (5x faster than json.loads
        # for 40 KB of floats); the schema is still declared here for clients and schemathesis
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RouteIn"}}}}},
        responses={422: {"model": HTTPValidationErrorOut}},
    )
    async def route(request: Request) -> Any:
        started = time.perf_counter()
        body = _decode(await request.body())
        router = ready_router()
        req = RoutingRequest.from_arrays(*body)  # one batch conversion and check, no object per candidate
        response = router.route(req)
        request_id = new_request_id()
        ids, order, conf, light, unc = response.decisions.ranked_arrays()  # type: ignore[attr-defined]
        # log exactly what the model saw (ranked), so retraining learns from the served features
        inputs = response.features[order] if response.features is not None else np.zeros((req.size, 5), np.float32)
        service.writer.submit([decision_record(request_id, "candidate", response.model_version, ids, inputs, conf, unc,
                                               light, response.inference_time_us)])
        conf_list = [None if c != c else c for c in conf.tolist()]  # NaN → null
        unc_list = unc.tolist() if unc is not None else [None] * len(ids)
        payload = {
            "request_id": request_id,
            "decisions": [{"candidate_id": a, "confidence": b, "use_lightweight": c, "uncertainty": d}
                          for a, b, c, d in zip(ids, conf_list, light.tolist(), unc_list)],
            "inference_time_us": response.inference_time_us,
            "candidates_processed": response.candidates_processed,
            "feature_time_us": response.feature_time_us,
            "model_version": response.model_version,
            "calibrated": response.calibrated,
            "fallback": response.fallback,
            "fallback_reason": response.fallback_reason,
        }
        m.route_done(len(ids), int(light.sum()), response.fallback, response.inference_time_us * 1e-6,
                     time.perf_counter() - started, conf, unc)
        return Response(to_json(payload), media_type="application/json")

    @app.post("/v1/route/query", response_model=QueryOut, summary="Pick the model tier for a query")
    async def route_query(body: QueryIn) -> Any:
        started = time.perf_counter()
        qr = service.query_router
        if qr is None:
            raise HTTPException(503, "no query router loaded: start the service with --query-router DIR")
        if (body.query is None) == (body.embedding is None):
            raise unprocessable("give exactly one of 'query' (text) or 'embedding'")
        if body.query is not None:
            if not body.query.strip():
                raise unprocessable("the query is blank", ("body", "query"))
            emb = (await asyncio.to_thread(qr.embedder.embed, [body.query]))[0]
        else:
            emb = as_float_array(body.embedding, "embedding", ndim=1)
        decision = qr.route(emb, text=body.query)
        explored = settings.query_exploration > 0 and service.rng.random() < settings.query_exploration
        if explored:
            decision = _explore(qr, emb, body.query, decision, int(service.rng.integers(len(qr.models))))
            m.explorations.inc()
        latency = (time.perf_counter() - started) * 1e6
        request_id = new_request_id()
        service.writer.submit(decision_tuples(request_id, "query", str(qr.info.get("trained_at", "")),
                                              [DecisionRow(decision.model, 0, emb, decision.predicted_quality,
                                                           decision.strong_score, decision.model != qr.models[qr.strong])],
                                              latency, None if body.query is None else query_key(body.query)))
        m.requests.labels("/v1/route/query").inc()
        m.latency.observe_many([latency * 1e-6], "/v1/route/query")
        return {"request_id": request_id, **decision.to_dict(), "latency_us": latency, "explored": explored}

    @app.post("/v1/feedback", response_model=FeedbackOut, summary="Record how a routed request turned out")
    async def feedback(body: FeedbackIn) -> Any:
        service.writer.flush()  # the decision may still be in the group commit
        try:
            target = service.storage.record_outcome(body.request_id, body.candidate_id, body.success, body.quality, body.cost)
        except UnknownRequestError as exc:
            m.errors.labels("/v1/feedback", "unknown_request").inc()
            raise HTTPException(404, str(exc).strip('"')) from None
        m.requests.labels("/v1/feedback").inc()
        m.feedback.labels(str(body.success).lower()).inc()
        return {"status": "recorded", "request_id": body.request_id, "target": target}

    # ------------------------------------------------------------------ health and info
    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", responses={503: {"description": "no model loaded"}})
    async def ready() -> Any:
        if service.router is None:
            return JSONResponse({"ready": False, "reason": service.not_ready_reason}, status_code=503)
        return {"ready": True, "model_version": service.router.served.version}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Any:
        if service.router is not None and service.router.breaker is not None:
            m.breaker_state.set(STATE_CODE[service.router.breaker.state])
        m.fold()
        return PlainTextResponse(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        r = service.router
        return {
            "version": __version__,
            "uptime_s": round(time.time() - service.started, 1),
            "ready": r is not None,
            "model": None if r is None else {
                "version": r.served.version, "path": r.served.path, "sha256": r.served.sha256,
                "loaded_at": r.served.loaded_at, "calibrated": r.served.calibrator is not None,
                "size_bytes": r.served.model.size_bytes(),
            },
            "query_router": None if service.query_router is None else {
                "models": service.query_router.models, "embedder": service.query_router.embedder_id},
            "database": str(settings.database_path),
            "auth": bool(settings.auth_token),
        }

    # ------------------------------------------------------------------ admin
    @app.post("/admin/reload", response_model=ReloadOut, dependencies=admin, responses={422: {"description": "bad model file"}})
    async def reload(body: ReloadIn | None = None) -> Any:
        try:
            served = await asyncio.to_thread(service.reload, body.model_path if body else None)
        except TinyDancerError as exc:
            raise unprocessable(f"reload failed, the previous model keeps serving: {exc}") from None
        return {"status": "reloaded", "model_version": served.version, "sha256": served.sha256, "model_path": served.path}

    def config_out(router: Router) -> dict[str, Any]:
        c = router.config
        return {"confidence_threshold": c.confidence_threshold, "max_uncertainty": c.max_uncertainty,
                "enable_circuit_breaker": c.enable_circuit_breaker, "circuit_breaker_threshold": c.circuit_breaker_threshold,
                "enable_quantization": c.enable_quantization, "fallback_on_open": c.fallback_on_open}

    @app.get("/admin/config", response_model=ConfigOut, dependencies=admin)
    async def get_config() -> Any:
        return config_out(ready_router())

    @app.put("/admin/config", response_model=ConfigOut, dependencies=admin)
    async def put_config(body: ConfigIn) -> Any:
        router = ready_router()
        router.set_thresholds(body.confidence_threshold, body.max_uncertainty)
        return config_out(router)

    @app.get("/admin/circuit-breaker", response_model=BreakerOut, dependencies=admin)
    async def breaker() -> Any:
        router = ready_router()
        return {"enabled": False} if router.breaker is None else {"enabled": True, **router.breaker.status()}

    @app.post("/admin/circuit-breaker/reset", response_model=BreakerOut, dependencies=admin)
    async def breaker_reset() -> Any:
        router = ready_router()
        if router.breaker is None:
            return {"enabled": False}
        router.breaker.reset()
        return {"enabled": True, **router.breaker.status()}

    @app.get("/admin/stats", dependencies=admin)
    async def stats() -> dict[str, Any]:
        service.writer.flush()
        return service.storage.statistics()

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
