"""Tiny Dancer's log inside LiteLLM: :class:`TinyDancerLogger` (see :mod:`tinydancer.integrations.litellm`
for what it records and promises).

Apart from the routing strategy (:mod:`~tinydancer.integrations.litellm_routing`) because it runs
after the call, in a background thread, and must never hold a call up."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ValidationError
from ..llm import query_key
from ..server.storage import CallRecord, SQLiteStorage, decision_record, open_storage
from ..server.storage.base import clean_log
from .litellm_judge import JudgedSample, JudgeSettings, LiteLLMJudge
from .litellm_routing import METADATA_KEY, TinyDancerRoutingStrategy, _last_user_text

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError("tinydancer.integrations.litellm needs LiteLLM: pip install 'tinydancer[litellm]'") from exc

__all__ = ["TinyDancerLogger", "DECISION_HEADER", "Judge"]

log = logging.getLogger("tinydancer.litellm")


_DROPPED: Any = None


def _dropped_counter() -> Any:
    """The process's one counter of dropped records (every logger adds to it)."""
    global _DROPPED
    if _DROPPED is None:
        from prometheus_client import Counter

        _DROPPED = Counter("tiny_dancer_litellm_dropped_records", "LiteLLM call records dropped because the log "
                           "queue was full")
    return _DROPPED


#: a judge grades a successful call: (prompt, answer, router model) → quality in [0, 1], or None
Judge = Callable[[str, str, str], "float | None"]

#: the response header (proxy) and ``_hidden_params`` key (SDK) that carry the decision id
DECISION_HEADER = "x-tinydancer-decision-id"


def _answer_text(response_obj: Any) -> str | None:
    try:
        content = response_obj.choices[0].message.content
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _tag_of(request: Any) -> dict[str, Any] | None:
    """Our decision's tag in a request's metadata (LiteLLM uses ``metadata`` or ``litellm_metadata``)."""
    if not isinstance(request, dict):
        return None
    for key in ("metadata", "litellm_metadata"):
        metadata = request.get(key)
        tag = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
        if isinstance(tag, dict) and tag.get("decision_id"):
            return tag
    return None


class TinyDancerLogger(CustomLogger):
    """LiteLLM calls into Tiny Dancer's log: one decision per call, one call row per attempt
    (tokens, LiteLLM's cost, latency, status), an outcome per failed attempt and, for the
    successes a judge grades, an outcome with the judged quality, so retraining learns from
    LiteLLM traffic.  It also hands each routed response its decision id (``_hidden_params`` in the
    SDK, the ``x-tinydancer-decision-id`` header through the proxy) so the client can send feedback.

    ``storage``: a database path or a storage; ``strategy``: the routing strategy whose decisions
    these calls carry (their embeddings are what retraining learns from).  ``judge`` (optional)
    grades a sampled ``judge_rate`` share of successful answers, in the logger's thread, never on
    the call: a success without a grade writes no outcome, because an answer is not evidence that it
    was good enough (logged as success 1, every answer of the cheap model would teach the router
    that the cheap model always suffices).

    ``judging`` (a :class:`~tinydancer.integrations.litellm_judge.JudgeSettings`, or a running
    :class:`~tinydancer.integrations.litellm_judge.LiteLLMJudge`) is the same with a judge *model*:
    a seeded ``sample_share`` of successful routed calls is graded by a LiteLLM model group or an
    OpenAI-compatible endpoint within ``daily_dollars`` a UTC day, in the judge's own thread, and
    each grade is an outcome of the call's decision with source ``judge``.
    """

    def __init__(self, storage: SQLiteStorage | str | Path, strategy: TinyDancerRoutingStrategy | None = None,
                 max_queue: int = 10_000, judge: Judge | None = None, judge_rate: float = 1.0,
                 seed: int | None = None, judging: JudgeSettings | LiteLLMJudge | None = None) -> None:
        super().__init__()
        if not 0.0 <= judge_rate <= 1.0:
            raise ValidationError(f"judge_rate is a share of successful calls, in [0, 1]; got {judge_rate}")
        self.storage = storage if isinstance(storage, SQLiteStorage) else open_storage(Path(storage))
        self.strategy = strategy
        self.judge = judge
        self.judge_rate = judge_rate
        self._rng = random.Random(seed)
        self.dropped = 0
        self.written = 0
        self.judged = 0
        #: records handed to the logger by LiteLLM (written, queued or dropped)
        self.received = 0
        #: decision id → attempts logged so far (the writer thread's own; bounded)
        self._attempts: OrderedDict[str, int] = OrderedDict()
        self._queue: queue.Queue[tuple[dict[str, Any], bool, Any] | None] = queue.Queue(maxsize=max_queue)
        self.judging = judging if not isinstance(judging, JudgeSettings) else LiteLLMJudge(
            judging, self._write_grade, lambda: None if self.strategy is None else self.strategy.llm_router)
        self._thread = threading.Thread(target=self._drain, name="tinydancer-litellm-log", daemon=True)
        self._thread.start()
        self.dropped_metric = _dropped_counter()

    # ------------------------------------------------------------------ LiteLLM's hooks (never block)
    def _put(self, kwargs: dict[str, Any], ok: bool, response_obj: Any = None) -> None:
        self.received += 1
        try:
            self._queue.put_nowait((kwargs, ok, response_obj))
        except queue.Full:
            self.dropped += 1
            self.dropped_metric.inc()

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, True, response_obj)

    def log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, False)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, True, response_obj)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._put(kwargs, False)

    async def async_post_call_success_deployment_hook(self, request_data: dict, response: Any, call_type: Any) -> Any:
        """The decision id onto the response, where the caller can read it: ``_hidden_params
        ["tinydancer_decision_id"]`` (SDK) and ``additional_headers``, which LiteLLM's proxy sends
        as response headers (``x-tinydancer-decision-id``)."""
        tag = _tag_of(request_data)
        if tag is not None and self.strategy is not None and not self.strategy.issued(tag["decision_id"]):
            tag = None
        hidden = getattr(response, "_hidden_params", None)
        if isinstance(tag, dict) and isinstance(hidden, dict) and tag.get("decision_id"):
            hidden["tinydancer_decision_id"] = str(tag["decision_id"])
            headers = hidden.get("additional_headers")
            if not isinstance(headers, dict):
                headers = hidden["additional_headers"] = {}
            headers[DECISION_HEADER] = str(tag["decision_id"])
        return None  # the response itself is unchanged

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict: Any, response: Any,
                                                    request_headers: dict[str, str] | None = None,
                                                    litellm_call_info: dict[str, object] | None = None) -> dict[str, str] | None:
        """The proxy's own hook for response headers: the decision id, when the call was routed."""
        tag = _tag_of(data)
        if tag is not None and self.strategy is not None and not self.strategy.issued(tag["decision_id"]):
            tag = None
        if tag is None:
            hidden = getattr(response, "_hidden_params", None)
            decision_id = hidden.get("tinydancer_decision_id") if isinstance(hidden, dict) else None
        else:
            decision_id = tag.get("decision_id")
        return {DECISION_HEADER: str(decision_id)} if decision_id else None

    # ------------------------------------------------------------------ the writer thread
    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            try:
                self._write(*item)
                self.written += 1
            except Exception:
                log.exception("a LiteLLM call could not be logged")
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until the queued records are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=5)
        if self.judging is not None:
            self.judging.close()

    def _write_grade(self, sample: JudgedSample, quality: float) -> None:
        """A judge's grade as an outcome of the call's decision (the judge's thread)."""
        if sample.remote:  # the service logged the decision: the grade goes to it as feedback
            if self.strategy is not None and self.strategy.service_url is not None and sample.rank == 0:
                self._post_feedback(sample.decision_id, quality >= 0.5, quality, sample.cost)
            return
        self.storage.insert_log([], [], [(sample.decision_id, sample.model, sample.rank, int(quality >= 0.5), quality,
                                          sample.cost, time.time(), "judge")])

    def _post_feedback(self, decision_id: str, success: bool, quality: float | None, cost: Any) -> None:
        import json
        import urllib.request

        assert self.strategy is not None and self.strategy.service_url is not None
        body: dict[str, Any] = {"request_id": decision_id, "success": success}
        if quality is not None:
            body["quality"] = float(quality)
        if isinstance(cost, (int, float)) and cost >= 0:
            body["cost"] = float(cost)
        headers = {"Content-Type": "application/json"}
        if self.strategy.api_key:
            headers["Authorization"] = f"Bearer {self.strategy.api_key}"
        req = urllib.request.Request(f"{self.strategy.service_url}/v1/feedback", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.strategy.timeout_s) as resp:  # noqa: S310 - the configured service
            resp.read()

    def _attempt_model(self, kwargs: dict[str, Any], slo: dict[str, Any], tag: dict[str, Any]) -> str:
        """The router model this attempt's deployment plays (each retry may be another deployment;
        the request's tag holds only the latest)."""
        if self.strategy is not None:
            params = kwargs.get("litellm_params") or {}
            deployment_id = slo.get("model_id") or (params.get("model_info") or {}).get("id")
            for key in (slo.get("model"), deployment_id):
                if key is not None and str(key) in self.strategy.deployments:
                    return self.strategy.deployments[str(key)]
        return str(tag.get("router_model") or tag["ranking"][0])

    def _grade(self, ok: bool, response_obj: Any, text: str, model: str) -> float | None:
        """The judge's quality for a sampled success (None: not sampled, not gradable, or no judge)."""
        if not ok or self.judge is None or self._rng.random() >= self.judge_rate:
            return None
        answer = _answer_text(response_obj)
        if answer is None or not text:
            return None
        try:
            quality = self.judge(text, answer, model)
        except Exception:
            log.exception("the judge failed on a LiteLLM answer; the call is logged without a grade")
            return None
        if quality is None or not 0.0 <= float(quality) <= 1.0:
            return None
        self.judged += 1
        return float(quality)

    def _write(self, kwargs: dict[str, Any], ok: bool, response_obj: Any = None) -> None:
        params = kwargs.get("litellm_params") or {}
        metadata = params.get("metadata") or kwargs.get("litellm_metadata") or kwargs.get("metadata") or {}
        tag = metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None
        if not isinstance(tag, dict) or not isinstance(tag.get("ranking"), list) or not tag.get("decision_id"):
            return  # not a call our strategy routed: nothing to learn from
        if self.strategy is not None and not self.strategy.issued(tag["decision_id"]):
            return  # a tag our strategy did not make (a client's metadata): not ours to log
        slo = kwargs.get("standard_logging_object") or {}
        decision_id = str(tag["decision_id"])
        ranking = [str(m) for m in tag["ranking"]]
        model = self._attempt_model(kwargs, slo, tag)
        deployment = slo.get("model") or metadata.get("deployment") or model
        started, ended = slo.get("startTime"), slo.get("endTime")
        total_ms = float(ended - started) * 1e3 if isinstance(started, (int, float)) and isinstance(ended, (int, float)) else 0.0
        # a stream that broke after its first chunk reaches us as a failure whose logging object
        # has no stream flag: the request's own flag says it was a stream
        stream = bool(slo.get("stream") or kwargs.get("stream") or (kwargs.get("optional_params") or {}).get("stream"))
        status = "ok" if ok else "failed"
        attempt = self._attempts.get(decision_id, 0)
        self._attempts[decision_id] = attempt + 1
        self._attempts.move_to_end(decision_id)
        while len(self._attempts) > 100_000:
            self._attempts.popitem(last=False)
        remembered = self.strategy.decisions.get(decision_id) if self.strategy is not None else None
        emb, quality, text = remembered if remembered is not None else (None, {}, "")
        if not text:
            text = _last_user_text(kwargs.get("messages")) or ""
        graded = self._grade(ok, response_obj, text, model)
        answer = _answer_text(response_obj) if ok and self.judging is not None else None
        rank = ranking.index(model) if model in ranking else 0
        sample = None if answer is None or not text else JudgedSample(
            decision_id, model, rank, text, answer, slo.get("response_cost"), bool(tag.get("remote")))
        if tag.get("remote"):
            if sample is not None and self.judging is not None:
                self.judging.offer(sample)
            # the service logged this decision itself: outcomes go to it as feedback, for the model
            # it decided (the one its log holds), when this attempt went there
            if self.strategy is not None and self.strategy.service_url is not None and model == ranking[0]:
                if not ok:
                    self._post_feedback(decision_id, False, None, slo.get("response_cost"))
                elif graded is not None:
                    self._post_feedback(decision_id, True, graded, slo.get("response_cost"))
            return
        call = CallRecord(decision_id, attempt, str(deployment), model, status, None, stream, slo.get("prompt_tokens"),
                          slo.get("completion_tokens"), slo.get("response_cost"), None, total_ms, time.time())
        decisions = []
        if attempt == 0:  # one decision per call, whatever its retries and fallbacks
            vec = np.zeros(0, np.float32) if emb is None else np.asarray(emb, np.float32)
            router = self.strategy.router if self.strategy is not None else None
            strong = router.models[router.strong] if router is not None else None
            decisions.append(decision_record(
                decision_id, "query", "litellm", ranking, np.tile(vec, (len(ranking), 1)),
                np.array([quality.get(m, np.nan) for m in ranking], np.float32), None,
                np.array([m != strong for m in ranking], np.uint8), 0.0, query_key(text) if text else None,
                propensity=tag.get("propensity"), explored=tag.get("explored")))
        outcomes = []
        if not ok:
            outcomes.append(call.failure_outcome(rank))
        elif graded is not None:
            outcomes.append((decision_id, model, rank, 1, graded, call.cost, call.created_at))
        # LiteLLM's token counts and cost are an upstream's word: an impossible one is logged as unknown
        (decisions, calls, outcomes, _), refused = clean_log(decisions, [call.row()], outcomes)
        if refused:
            log.warning("tinydancer: log rows of %s refused: %s", decision_id, "; ".join(refused))
        self.storage.insert_log(decisions, calls, outcomes)
        if sample is not None and self.judging is not None:  # after the decision is written: the grade refers to it
            self.judging.offer(sample)
