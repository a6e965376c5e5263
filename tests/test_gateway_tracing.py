"""OpenTelemetry spans of the gateway's chat calls: the SDK's in-memory exporter behind the real
gateway, and the OTLP/HTTP exporter the ``OTEL_*`` variables turn on, sending to a loopback
collector stand-in that decodes what it receives."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from test_gateway import EMBEDDER, HARD_Q, KEY, config_dict, router_dir  # noqa: F401 (fixtures)
from tinydancer.gateway import create_gateway_app
from tinydancer.gateway.config import parse_config
from tinydancer.gateway.standin import StandIn, running
from tinydancer.server import ServiceSettings

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install 'tinydancer[otel]') is not installed")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def wait_for(what: Callable[[], Any], deadline_s: float = 20.0) -> Any:
    end = time.monotonic() + deadline_s
    while not (found := what()) and time.monotonic() < end:
        time.sleep(0.02)
    return found


@pytest.fixture()
def traced(router_dir: Path, tmp_path: Path) -> Iterator[tuple[str, StandIn, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    strong, weak = StandIn("big-model"), StandIn("small-model")
    with running(strong.app()) as su, running(weak.app()) as wu:
        cfg = parse_config(config_dict(router_dir, {"strong": su, "weak": wu}))
        settings = ServiceSettings(database_path=tmp_path / "gw.db", api_keys=(f"alice:{KEY}",), watch_interval_s=0)
        app = create_gateway_app(cfg, settings, embedder=EMBEDDER, tracer_provider=provider)
        with running(app) as base:
            yield base, strong, exporter


def roots(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def test_a_routed_call_that_fell_back_is_one_trace(traced: Any) -> None:
    import openai

    base, strong, exporter = traced
    strong.mode = "500"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="tinydancer", messages=[{"role": "user", "content": HARD_Q}],
        extra_headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
    assert raw.headers["x-tinydancer-model"] == "weak"
    [root] = wait_for(lambda: roots(exporter))
    a = root.attributes
    assert root.name == "chat tinydancer" and root.status.status_code is not StatusCode.ERROR
    assert format(root.context.trace_id, "032x") == TRACE_ID  # the caller's trace goes on
    assert (a["gen_ai.operation.name"], a["gen_ai.request.model"], a["gen_ai.response.model"]) == \
        ("chat", "tinydancer", "small-model")
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "tinydancer"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (4, 5)
    assert a["tinydancer.decision_id"] == raw.headers["x-tinydancer-decision-id"]
    assert a["tinydancer.predicted_quality"] == pytest.approx(float(raw.headers["x-tinydancer-predicted-quality"]), abs=1e-4)
    assert a["tinydancer.cost"] == pytest.approx(float(raw.headers["x-tinydancer-cost"]))
    assert a["tinydancer.cost_source"] == "usage" and a["tinydancer.fallback_attempts"] == 1
    assert a["tinydancer.key_name"] == "alice"
    children = sorted((s for s in exporter.get_finished_spans() if s.parent is not None and
                       s.parent.span_id == root.context.span_id), key=lambda s: s.start_time)
    assert [s.name.split()[0] for s in children] == ["embeddings", "chat", "chat"]
    assert [s.name for s in children[1:]] == ["chat big-model", "chat small-model"]
    embed, failed, served = children
    assert embed.attributes["gen_ai.operation.name"] == "embeddings" and embed.end_time <= failed.start_time
    assert failed.attributes["error.type"] == "http_5xx" and failed.status.status_code is StatusCode.ERROR
    assert failed.attributes["http.response.status_code"] == 500 and failed.kind is SpanKind.CLIENT
    assert served.attributes["gen_ai.usage.output_tokens"] == 5 and served.attributes["server.address"] == "127.0.0.1"
    assert root.start_time <= embed.start_time and served.end_time <= root.end_time
    # no prompt text without log_prompts
    text = repr([dict(s.attributes) for s in exporter.get_finished_spans()])
    assert "cohomology" not in text and "tinydancer.prompt" not in text


def test_a_stream_is_traced_when_it_ends(traced: Any) -> None:
    import openai

    base, _, exporter = traced
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
    chunks = list(client.chat.completions.create(model="weak", stream=True, messages=[{"role": "user", "content": HARD_Q}]))
    assert chunks
    [root] = wait_for(lambda: roots(exporter))
    assert root.name == "chat weak" and root.attributes["gen_ai.response.model"] == "small-model"
    assert root.attributes["tinydancer.routed"] is False and root.attributes["gen_ai.usage.output_tokens"] == 5
    names = [s.name for s in exporter.get_finished_spans() if s.parent is not None]
    assert names == ["chat small-model"]  # a named call is not embedded


class Collector:
    """A loopback OTLP/HTTP trace receiver: decodes each export request."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def app(self) -> Any:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def traces(request: Request) -> Response:
            message = ExportTraceServiceRequest()
            message.ParseFromString(await request.body())
            self.requests.append(message)
            return Response(b"", media_type="application/x-protobuf")

        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])

    def spans(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(name, attributes, resource attributes) of every span received."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append((span.name, {kv.key: _value(kv.value) for kv in span.attributes}, resource))
        return out


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


def test_otel_variables_send_spans_to_an_otlp_collector(router_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import openai

    collector = Collector()
    weak = StandIn("small-model")
    with running(collector.app()) as endpoint, running(weak.app()) as wu:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-under-test")
        cfg = parse_config(config_dict(router_dir, {"strong": wu, "weak": wu}, log_prompts=True))
        app = create_gateway_app(cfg, ServiceSettings(database_path=tmp_path / "gw.db", api_keys=(), watch_interval_s=0),
                                 embedder=EMBEDDER)
        with running(app) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused-on-loopback", max_retries=0)
            client.chat.completions.create(model="tinydancer", messages=[{"role": "user", "content": HARD_Q}])
        # the gateway's shutdown flushed the batch
        spans = wait_for(collector.spans)
    root = next(a for name, a, _ in spans if name == "chat tinydancer")
    assert spans[0][2]["service.name"] == "gateway-under-test"
    assert root["tinydancer.prompt"] == HARD_Q  # log_prompts: true
    assert root["gen_ai.usage.input_tokens"] == 4 and "tinydancer.key_name" not in root  # no keys on loopback
    assert sorted(name.split()[0] for name, _, _ in spans) == ["chat", "chat", "embeddings"]


def test_without_the_variables_nothing_is_traced(monkeypatch: pytest.MonkeyPatch) -> None:
    from tinydancer.gateway.tracing import provider_from_environment

    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert provider_from_environment() is None
    assert provider_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert provider_from_environment({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}) is None
    from tinydancer.errors import ValidationError

    with pytest.raises(ValidationError, match="otlp or console"):
        provider_from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValidationError, match="http/protobuf or grpc"):
        provider_from_environment({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_asked_for_without_the_extra_the_gateway_serves_untraced(monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    import sys

    from tinydancer.gateway.tracing import provider_from_environment

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if the otel extra were not installed
    with caplog.at_level("WARNING", logger="tinydancer.gateway"):
        assert provider_from_environment({"OTEL_TRACES_EXPORTER": "otlp"}) is None
    assert "pip install 'tinydancer[otel]'" in caplog.text
