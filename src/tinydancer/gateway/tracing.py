"""OpenTelemetry traces of the gateway's chat calls, into the user's own observability stack.

Off unless asked for, through the standard variables: ``OTEL_TRACES_EXPORTER=otlp`` (or
``console``; ``none`` or unset: off), ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the collector;
``OTEL_EXPORTER_OTLP_PROTOCOL``: ``http/protobuf``, the default here, or ``grpc``),
``OTEL_SERVICE_NAME`` (default ``tinydancer-gateway``), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_SDK_DISABLED``.  The SDK and the OTLP exporter are the ``otel`` extra; without them the
gateway serves as before (nothing here imports OpenTelemetry until tracing is asked for) and says
once that tracing is off.

Each chat call that reached an upstream (or tried to) is one trace, built when the call is logged,
from the times the log keeps: a root span ``chat <requested model>`` (kind SERVER, the child of
the caller's ``traceparent`` when it sent one) with the GenAI semantic conventions' attributes
(``gen_ai.operation.name``, ``gen_ai.provider.name`` and the older ``gen_ai.system``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` /
``output_tokens``) and ours (``tinydancer.decision_id``, ``tinydancer.predicted_quality``,
``tinydancer.cost`` and ``tinydancer.cost_source``, ``tinydancer.fallback_attempts``,
``tinydancer.key_name``); a child ``embeddings <embedder>`` for the routed prompt's embedding; a
child ``chat <upstream model>`` (kind CLIENT) per upstream attempt, with its status as
``error.type`` when it failed.  The prompt's text (``tinydancer.prompt``) only when the config
says ``log_prompts: true``, as for the log.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from ..errors import ValidationError

__all__ = ["CallTracer", "provider_from_environment"]

log = logging.getLogger("tinydancer.gateway")

DEFAULT_SERVICE_NAME = "tinydancer-gateway"


def provider_from_environment(env: Mapping[str, str] = os.environ) -> Any:
    """A TracerProvider exporting where the ``OTEL_*`` variables say, or None when tracing is off."""
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names or names == ["none"] or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER=%s, but OpenTelemetry is not installed: tracing is off. Install it with "
                    "pip install 'tinydancer[otel]'", env["OTEL_TRACES_EXPORTER"])
        return None
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": DEFAULT_SERVICE_NAME}))
    for name in names:
        if name != "none":
            provider.add_span_processor(BatchSpanProcessor(_exporter(name, env)))
    return provider


def _exporter(name: str, env: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValidationError(f"OTEL_TRACES_EXPORTER={name}: the gateway exports traces with otlp or console (none: off)")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
        else:
            raise ValidationError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: use http/protobuf or grpc")
    except ImportError:
        package = "opentelemetry-exporter-otlp-proto-" + ("grpc" if protocol == "grpc" else "http")
        raise ValidationError(f"OTLP over {protocol} needs {package}: pip install {package} "
                              "(the otel extra brings http/protobuf)") from None
    return OTLPSpanExporter()


class CallTracer:
    """Turns a logged call (its plan and attempts) into spans."""

    def __init__(self, provider: Any, log_prompts: bool, owned: bool) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from .._version import __version__

        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()
        self.provider = provider
        self.tracer = provider.get_tracer("tinydancer.gateway", __version__)
        self.log_prompts = log_prompts
        #: made here from the environment: flushed and shut down with the gateway
        self.owned = owned

    def parent(self, headers: Mapping[str, str]) -> dict[str, str] | None:
        """The caller's trace context (``traceparent``, ``tracestate``), kept with the plan."""
        carrier = {k: headers[k] for k in ("traceparent", "tracestate") if k in headers}
        return carrier or None

    def emit(self, gw: Any, plan: Any, calls: Sequence[Any], served: Any) -> None:
        """The spans of one finished call, made after the answer has gone out: the SDK's spans cost
        ~0.1 ms each here (4 for a routed call that fell back once), time the answer need not wait."""
        try:
            asyncio.get_running_loop().call_soon(self._safe_emit, gw, plan, calls, served)
        except RuntimeError:  # no event loop (a test calling directly)
            self._safe_emit(gw, plan, calls, served)

    def _safe_emit(self, gw: Any, plan: Any, calls: Sequence[Any], served: Any) -> None:
        try:
            self._emit(gw, plan, calls, served)
        except Exception:  # a bug here is logged; tracing must not fail a call
            log.exception("tracing call %s failed", plan.request_id)

    def _emit(self, gw: Any, plan: Any, calls: Sequence[Any], served: Any) -> None:
        trace = self._trace
        kind = trace.SpanKind
        ctx = self._propagator.extract(plan.trace_parent) if plan.trace_parent else None
        up = gw.upstreams[served.upstream].config if served is not None else None
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "tinydancer", "gen_ai.system": "tinydancer",
            "gen_ai.request.model": plan.model, "tinydancer.decision_id": plan.request_id, "tinydancer.routed": plan.routed,
            "tinydancer.attempts": len(calls),
            "tinydancer.fallback_attempts": sum(1 for c in calls if c is not served),
        }
        if plan.routed:
            attrs["tinydancer.router_version"] = gw.router_version
        if plan.key_name is not None:
            attrs["tinydancer.key_name"] = plan.key_name
        if up is not None:
            attrs.update({"gen_ai.response.model": up.model, "tinydancer.upstream": up.name})
            quality = plan.quality.get(up.plays)
            if quality is not None:
                attrs["tinydancer.predicted_quality"] = quality
            attrs.update(_usage(served))
        if plan.cost is not None:
            attrs["tinydancer.cost"], attrs["tinydancer.cost_source"] = plan.cost
        if self.log_prompts:
            attrs["tinydancer.prompt"] = plan.text
        end = int(max([c.created_at for c in calls], default=0.0) * 1e9) or None
        root = self.tracer.start_span(f"chat {plan.model}", context=ctx, kind=kind.SERVER, start_time=plan.started_ns,
                                      attributes=attrs)
        inside = trace.set_span_in_context(root)
        if plan.embed_ns is not None:
            span = self.tracer.start_span(f"embeddings {gw.router.embedder_id}", context=inside, kind=kind.INTERNAL,
                                          start_time=plan.embed_ns[0],
                                          attributes={"gen_ai.operation.name": "embeddings",
                                                      "gen_ai.request.model": gw.router.embedder_id})
            span.end(end_time=plan.embed_ns[1])
        for c in calls:
            self._attempt(gw, inside, c)
        if served is None or served.status != "ok":
            root.set_status(trace.Status(trace.StatusCode.ERROR, served.status if served is not None else "no answer"))
            root.set_attribute("error.type", served.status if served is not None else (calls[-1].status if calls else "none"))
        root.end(end_time=end)

    def _attempt(self, gw: Any, inside: Any, c: Any) -> None:
        trace = self._trace
        cfg = gw.upstreams[c.upstream].config
        where = urlsplit(cfg.base_url)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.system": "openai",
            "gen_ai.request.model": cfg.model, "server.address": where.hostname or "",
            "server.port": where.port or (443 if where.scheme == "https" else 80),
            "tinydancer.upstream": c.upstream, "tinydancer.attempt": c.attempt, "tinydancer.status": c.status,
            **_usage(c),
        }
        if c.http_status is not None:
            attrs["http.response.status_code"] = c.http_status
        if c.status == "ok":
            attrs["gen_ai.response.model"] = cfg.model
        if c.cost is not None:
            attrs["tinydancer.cost"] = c.cost
        end = int(c.created_at * 1e9)
        span = self.tracer.start_span(f"chat {cfg.model}", context=inside, kind=trace.SpanKind.CLIENT,
                                      start_time=end - int(c.total_ms * 1e6), attributes=attrs)
        if c.status != "ok":
            span.set_attribute("error.type", c.status)
            span.set_status(trace.Status(trace.StatusCode.ERROR, c.status))
        span.end(end_time=end)

    def shutdown(self) -> None:
        """Flush what is left (BatchSpanProcessor exports in the background) when the provider is ours."""
        if self.owned:
            self.provider.shutdown()


def _usage(c: Any) -> dict[str, int]:
    out = {}
    if c.prompt_tokens is not None:
        out["gen_ai.usage.input_tokens"] = c.prompt_tokens
    if c.completion_tokens is not None:
        out["gen_ai.usage.output_tokens"] = c.completion_tokens
    return out
