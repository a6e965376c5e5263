"""Mutation check: put one known bug at a time into a copy of the source, run the tests that must
see it, and report which test caught it.  Every mutant must be caught.

Each mutant is (area, what it breaks, file, the exact original snippet, its replacement, the test
node ids that must catch it).  The source tree is never touched: each mutant runs against its own
copy of ``src/`` in a temporary folder, put first on ``PYTHONPATH`` (subprocesses the tests start
inherit it).  Only the mutant's catching tests run (``pytest -x``, a timeout per mutant).

Fails loudly, before running anything, when a snippet is not found exactly once (the code moved:
re-aim the mutant).  A catching test that no longer exists (renamed) makes its mutant an ERROR
(pytest exit 4), never "caught"; ``--check-tests`` collects them all first.  Exit status: 0 all
caught; 1 a mutant survived, timed out or its run errored; 2 the list no longer fits the code.

    .venv/bin/python tools/mutation_check.py --report mutation-report.md     # all (a few minutes)
    .venv/bin/python tools/mutation_check.py -k gateway --jobs 1              # those whose id has "gateway"
    .venv/bin/python tools/mutation_check.py --list

Why a list of our own rather than mutmut or cosmic-ray (measured): mutmut 3.8 makes 6,656
mutants of the 14 modules this list covers (learning.py alone 1,058), most of them in strings and
log messages; at the 2-5 s a targeted pytest run takes here that is 4-9 hours on 2 cores, against
a CI budget of minutes.  A list aims at the promises the README makes, runs each mutant against
the few tests that guard it, and is deterministic.  Each worker imports the heavy third-party
packages once and forks a pytest run per mutant (``--no-preload``: a fresh python each time,
slower): the 54 mutants take about 2.5 minutes on 2 busy cores.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


G = "tests/test_gateway.py::"
P = "tests/test_promises.py::"
C = "tests/test_concurrency.py::"
SC = "tests/test_storage_contract.py::"
R = "tests/test_registry.py::"
L = "tests/test_learning.py::"
QL = "tests/test_query_learning.py::"
LB = "tests/test_labelling.py::"
LL = "tests/test_litellm_integration.py::"
LBB = "tests/test_label_budget.py::"
H = "tests/test_gateway_hostile.py::"
D = "tests/test_dashboard.py::"
SF = "tests/test_storage_faults.py::"
J = "tests/test_judging.py::"
LF = "tests/test_litellm_failover.py::"
LLL = "tests/test_litellm_learning.py::test_judged_and_explored_litellm_traffic_is_what_retraining_decides_on"
GL = "tests/test_gateway_learning.py::"
K = "tests/test_gateway_keys.py::"
T = "tests/test_gateway_tracing.py::"
GE = "tests/test_gateway_embedding.py::"
RT = "tests/test_routing.py::"

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ gateway: keys
    Mutant("gateway-keys-generic-scrub", "an upstream's error text reaches the client unscrubbed (every status)",
           "src/tinydancer/gateway/upstream.py",
           "        detail = self.safe(_error_message(payload))\n", "        detail = _error_message(payload)\n",
           (P + "test_an_upstream_error_that_echoes_the_key_is_scrubbed_on_every_status[500]",)),
    Mutant("gateway-keys-own-secret", "the gateway forgets its own provider key when scrubbing (only key-like tokens go)",
           "src/tinydancer/gateway/upstream.py",
           '            text = text.replace(s, "[redacted]")\n', "            pass\n",
           (P + "test_an_upstream_error_that_echoes_the_key_is_scrubbed_on_every_status[500]",)),
    Mutant("gateway-keys-keylike", "key-like tokens (sk-…) are no longer scrubbed", "src/tinydancer/gateway/upstream.py",
           '    text = _USERINFO.sub(r"\\1[redacted]@", _KEYLIKE.sub("[redacted]", text))\n',
           '    text = _USERINFO.sub(r"\\1[redacted]@", text)\n',
           (G + "test_scrub_removes_keys_and_url_credentials",)),
    Mutant("gateway-keys-401-message", "a 401 from the upstream is passed on as the client's error",
           "src/tinydancer/gateway/forwarding.py",
           "        if f.status in (401, 403):\n", "        if f.status in (403,):\n",
           (G + "test_a_refused_request_is_not_retried_and_the_provider_key_never_reaches_the_client",)),
    # ------------------------------------------------------------------ gateway: streaming
    Mutant("gateway-stream-no-done", "a stream that ends without [DONE] ends silently",
           "src/tinydancer/gateway/forwarding.py",
           '        if not tap.done:\n            status = "broken"\n', '        if False:\n            status = "broken"\n',
           (P + "test_a_stream_that_ends_without_done_ends_with_an_error_event",)),
    Mutant("gateway-stream-done-unseen", "[DONE] is never noticed (every stream ends with an error)",
           "src/tinydancer/gateway/sse.py",
           "            self.done = True\n", "            pass\n",
           (G + "test_streaming_relays_chunks_and_records_usage",)),
    Mutant("gateway-stream-usage-chunk-leaks", "the usage chunk the gateway asked for reaches a client that did not",
           "src/tinydancer/gateway/sse.py",
           '        if not (self.keep_usage_chunk or payload.get("choices")):\n',
           "        if False:\n",
           (G + "test_streaming_relays_chunks_and_records_usage",)),
    Mutant("gateway-stream-usage-not-asked", "streams are not asked for usage (their cost is unknown)",
           "src/tinydancer/gateway/forwarding.py",
           "    if stream and not client_usage:", "    if False:",
           (G + "test_streaming_relays_chunks_and_records_usage",)),
    # ------------------------------------------------------------------ gateway: fallbacks and breakers
    Mutant("gateway-fallback-5xx", "a 500 is not retried on the next model", "src/tinydancer/gateway/upstream.py",
           'RETRYABLE = frozenset({"http_429", "http_5xx", "timeout",',
           'RETRYABLE = frozenset({"http_429", "timeout",',
           (G + "test_a_failing_upstream_falls_back_and_the_failure_is_an_outcome[500]",)),
    Mutant("gateway-fallback-one-attempt", "only the first upstream of the plan is ever tried",
           "src/tinydancer/gateway/forwarding.py",
           "            if len(self.calls) >= self.gw.config.max_attempts:\n", "            if len(self.calls) >= 1:\n",
           (G + "test_a_failing_upstream_falls_back_and_the_failure_is_an_outcome[429]",)),
    Mutant("gateway-breaker-ignored", "an open breaker does not keep calls away", "src/tinydancer/gateway/forwarding.py",
           "            if up.breaker.allow():\n", "            if True:\n",
           (G + "test_breaker_opens_after_repeated_failures",)),
    Mutant("gateway-breaker-not-fed", "failed attempts are not counted by the breaker", "src/tinydancer/gateway/forwarding.py",
           "        if failure.retryable and failure.its_fault:\n            up.breaker.record_failure()\n",
           "        if failure.retryable and failure.its_fault:\n            pass\n",
           (G + "test_breaker_opens_after_repeated_failures",)),
    Mutant("breaker-threshold-off-by-one", "the breaker opens one failure late", "src/tinydancer/circuit.py",
           "self._failures >= self.failure_threshold:", "self._failures > self.failure_threshold:",
           (G + "test_breaker_opens_after_repeated_failures",)),
    # ------------------------------------------------------------------ gateway: routing choice and cost
    Mutant("gateway-route-reversed", "the router's ranking is tried worst first", "src/tinydancer/gateway/state.py",
           "        ranking = self.router.ranking(values, point, allowed)\n",
           "        ranking = list(reversed(self.router.ranking(values, point, allowed)))\n",
           (G + "test_routed_calls_go_by_difficulty_and_carry_the_decision",)),
    Mutant("gateway-route-session-forgotten", "a conversation's session does not keep its model",
           "src/tinydancer/gateway/state.py",
           "                    order.insert(0, order.pop(i))\n", "                    pass\n",
           (G + "test_sessions_keep_a_conversation_on_one_model",)),
    Mutant("gateway-cost-output-price", "a call's cost leaves out the output tokens", "src/tinydancer/gateway/config.py",
           "        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6\n",
           "        return (prompt_tokens * self.input_per_million) / 1e6\n",
           (G + "test_metrics_count_calls_tokens_cost_and_savings",)),
    Mutant("gateway-cost-savings", "savings are counted against the served model, not the priciest",
           "src/tinydancer/gateway/state.py",
           "        self.reference = priciest\n",
           "        self.reference = min(config.upstreams, key=lambda u: u.input_per_million + u.output_per_million)\n",
           (G + "test_metrics_count_calls_tokens_cost_and_savings",)),
    # ------------------------------------------------------------------ gateway: the live operating point, exploration
    Mutant("gateway-live-point-frozen", "the live window never moves the operating point (the training prompts' share stays)",
           "src/tinydancer/gateway/operating.py",
           "        if self._since >= self.refresh and self.live:\n", "        if False:\n",
           (GL + "test_the_live_strong_share_meets_the_configured_one_on_traffic_unlike_the_training_data",)),
    Mutant("gateway-live-warm-start-ascending", "the warm start is written in ascending order (calls replace its lowest scores first)",
           "src/tinydancer/gateway/operating.py", "            self.values[:, 0] = warm[np.random.default_rng(0).permutation(self.size)]\n",
           "            self.values[:, 0] = warm\n",
           (GL + "test_traffic_like_the_warm_start_keeps_the_share_while_the_window_turns_over",)),
    Mutant("gateway-live-no-rescore", "a promoted router's window starts from its file, not the recent traffic re-scored",
           "src/tinydancer/gateway/operating.py", "            if carried is not None:\n", "            if False:\n",
           (GL + "test_a_promoted_router_takes_its_point_on_the_recent_traffic_not_on_its_file",)),
    Mutant("gateway-explore-open-breaker", "exploration sends calls to an upstream whose breaker is open",
           "src/tinydancer/gateway/state.py",
           "        eligible = [i for i in ranking if (up := self.player[i]) is not None and up.breaker.state is not BreakerState.OPEN]\n",
           "        eligible = [i for i in ranking if (up := self.player[i]) is not None]\n",
           (GL + "test_exploration_never_breaks_max_cost_an_open_breaker_or_a_session",)),
    Mutant("gateway-fallback-propensity-dropped", "a call that fell back from its planned (explored) model is logged without a "
           "propensity, so that model's failures vanish from the off-policy data", "src/tinydancer/gateway/state.py",
           "        rank = targets.index(planned) if planned in targets and calls[0].target == planned else None\n",
           "        rank = 0 if served is not None and served.target == planned == calls[0].target else None\n",
           (GL + "test_a_call_that_fell_back_logs_its_planned_models_propensity_and_failure",)),
    Mutant("storage-propensity-on-every-outcome", "a decision's propensity is read onto every outcome of it, the fallback's "
           "answer included", "src/tinydancer/server/storage/base.py",
           "    planned = [r[11] is not None and r[2] == (r[14] or 0) for r in rows]\n",
           "    planned = [r[11] is not None for r in rows]\n",
           (GL + "test_a_call_that_fell_back_logs_its_planned_models_propensity_and_failure",)),
    Mutant("storage-propensity-rank-unlogged", "the rank of the model a propensity is for is not stored, so a fallen-back "
           "call's propensity lands on the fallback's answer", "src/tinydancer/server/storage/base.py",
           "        None if propensity is None or propensity_rank == 0 else int(propensity_rank),\n", "        None,\n",
           (SC + "test_a_fallen_back_decisions_propensity_is_its_planned_models_outcomes_only",)),
    Mutant("offpolicy-gate-lenient", "the off-policy gate promotes whatever the evidence says",
           "src/tinydancer/server/offpolicy.py", "    passed = low >= -margin\n", "    passed = True\n",
           ("tests/test_offpolicy.py::test_the_gate_accepts_a_better_router_and_refuses_a_shuffled_one",)),
    # ------------------------------------------------------------------ keys, budgets, costs, traces (issue 28)
    Mutant("gateway-key-name-unlogged", "the calls log loses the client key's name", "src/tinydancer/gateway/forwarding.py",
           "                            self.plan.key_name)\n", "                            None)\n",
           (K + "test_the_log_keeps_the_key_name_never_the_key",)),
    Mutant("gateway-budget-ignored", "a key past its daily budget is still served", "src/tinydancer/gateway/budgets.py",
           "        if spent + held + estimate > budget or (estimate == 0.0 and spent >= budget):\n", "        if False:\n",
           (K + "test_a_budget_refuses_with_429_and_a_restart_keeps_todays_spend",)),
    Mutant("gateway-budget-reset-by-restart", "a restart forgets what the keys spent today", "src/tinydancer/gateway/state.py",
           "        self.spend.load(service.storage)\n", "",
           (K + "test_a_budget_refuses_with_429_and_a_restart_keeps_todays_spend",)),
    Mutant("gateway-budget-replicas-blind", "replicas sharing a log never see each other's spend",
           "src/tinydancer/gateway/state.py",
           "        service.watchers.append(lambda: self.spend.refresh(service.storage))\n", "",
           (K + "test_replicas_sharing_a_postgresql_log_see_each_others_spend",)),
    Mutant("gateway-cost-estimate-as-usage", "an answer without usage is said to be priced from usage",
           "src/tinydancer/gateway/budgets.py",
           '    return call_estimate(body, up), "estimate"\n', '    return call_estimate(body, up), "usage"\n',
           (K + "test_every_answer_says_what_it_cost",)),
    Mutant("gateway-trace-attempts-missing", "the upstream attempts of a traced call have no spans",
           "src/tinydancer/gateway/tracing.py",
           "            self._attempt(gw, inside, c)\n", "            pass\n",
           (T + "test_a_routed_call_that_fell_back_is_one_trace",)),
    # ------------------------------------------------------------------ storage (SQLite and PostgreSQL)
    Mutant("storage-sqlite-commit", "SQLite transactions roll back instead of committing (nothing acknowledged is kept)",
           "src/tinydancer/server/storage/sqlite.py",
           '        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")\n', '        self.conn.execute("ROLLBACK")\n',
           (SC + "test_decisions_outcomes_and_their_rules[sqlite]",)),
    Mutant("storage-pg-calls-dropped", "PostgreSQL drops the gateway's call rows", "src/tinydancer/server/storage/postgres.py",
           '                cur.executemany(f"INSERT INTO calls VALUES ({_q(14)})", calls)\n', "                pass\n",
           (SC + "test_gateway_calls_failures_and_prompts_in_one_transaction[postgres]",)),
    Mutant("storage-duplicate-outcome", "a second outcome for one decision silently replaces the first",
           "src/tinydancer/server/storage/base.py",
           "    if existing is not None and not correction:\n", "    if False:\n",
           (SC + "test_decisions_outcomes_and_their_rules[sqlite]", SC + "test_decisions_outcomes_and_their_rules[postgres]")),
    Mutant("storage-retention-days-scale-sqlite", "SQLite retention counts days as hours",
           "src/tinydancer/server/storage/sqlite.py",
           '                cut.append(("created_at < ?", (now - self.retention_days * 86400.0,)))\n',
           '                cut.append(("created_at < ?", (now - self.retention_days * 3600.0,)))\n',
           (P + "test_retention_by_age_removes_exactly_what_is_older_than_retention_days[sqlite]",)),
    Mutant("storage-retention-days-ignored-pg", "PostgreSQL retention ignores retention_days",
           "src/tinydancer/server/storage/postgres.py",
           "            if self.retention_days is not None:\n", "            if False:\n",
           (P + "test_retention_by_age_removes_exactly_what_is_older_than_retention_days[postgres]",)),
    Mutant("storage-retention-rows-off-by-one-sqlite", "SQLite keeps one row too many", "src/tinydancer/server/storage/sqlite.py",
           '                    cut.append(("created_at <= ?", (row[0],)))\n', '                    cut.append(("created_at < ?", (row[0],)))\n',
           (SC + "test_retention_keeps_the_newest_rows_with_their_outcomes[sqlite]",)),
    Mutant("storage-retention-rows-off-by-one-pg", "PostgreSQL keeps one row too many", "src/tinydancer/server/storage/postgres.py",
           '                    cut.append(("created_at <= %s", (row[0],)))\n', '                    cut.append(("created_at < %s", (row[0],)))\n',
           (SC + "test_retention_keeps_the_newest_rows_with_their_outcomes[postgres]",)),
    Mutant("storage-retention-orphans-outcomes", "SQLite retention leaves the removed decisions' outcomes",
           "src/tinydancer/server/storage/sqlite.py",
           '                conn.execute(f"DELETE FROM outcomes WHERE request_id IN ({old})", args)\n', "                pass\n",
           (SC + "test_retention_keeps_the_newest_rows_with_their_outcomes[sqlite]",)),
    # ------------------------------------------------------------------ promotion and the registry
    Mutant("registry-pg-no-advisory-lock", "PostgreSQL promotions run without the advisory lock",
           "src/tinydancer/server/storage/postgres.py",
           '            conn.execute("SELECT pg_advisory_xact_lock(%s)", (PROMOTION_LOCK,))\n', "            pass\n",
           (C + "test_promotions_at_once_exactly_one_wins[postgres]",)),
    Mutant("registry-folder-no-flock", "folder promotions run without the file lock", "src/tinydancer/server/registry.py",
           "            fcntl.flock(lock, fcntl.LOCK_EX)\n", "            pass\n",
           (C + "test_promotions_at_once_exactly_one_wins[folder]",)),
    Mutant("registry-pg-no-compare-and-set", "PostgreSQL promotion does not compare the current version",
           "src/tinydancer/server/storage/postgres.py",
           "            if check and found != expected:\n", "            if False:\n",
           (C + "test_two_retrains_started_together_promote_once[postgres]",)),
    Mutant("registry-folder-no-compare-and-set", "folder promotion does not compare the current version",
           "src/tinydancer/server/registry.py",
           "            if expected is not UNCHECKED and found != expected:\n", "            if False:\n",
           (C + "test_two_retrains_started_together_promote_once[folder]",)),
    Mutant("registry-sha256-unchecked", "a registry version whose bytes do not match its sha256 is served",
           "src/tinydancer/server/registry.py",
           "                if hashlib.sha256(data).hexdigest() != sha:\n", "                if False:\n",
           (P + "test_a_registry_version_whose_bytes_do_not_match_its_sha256_is_not_served",)),
    Mutant("registry-folder-serves-nothing", "a folder promotion records the version but does not write the served file",
           "src/tinydancer/server/registry.py",
           "            atomic_write_bytes(serve_path, Path(entry.model_path).read_bytes())\n", "            pass\n",
           (R + "test_folder_promotion_is_a_compare_and_set",)),
    # ------------------------------------------------------------------ learning: promotion gates, corrections
    Mutant("learning-candidate-worse-promoted", "a worse candidate model is promoted", "src/tinydancer/server/learning.py",
           '    better = new_m["log_loss"] <= old_m["log_loss"] and gate.passed\n', "    better = gate.passed\n",
           (L + "test_a_worse_model_is_kept_but_not_promoted",)),
    Mutant("learning-query-worse-promoted", "a worse query router is promoted", "src/tinydancer/server/learning.py",
           '    error_ok = new_m["squared_error"] <= old_m["squared_error"]\n', "    error_ok = True\n",
           (P + "test_a_worse_query_router_is_kept_but_not_promoted",)),
    Mutant("learning-mix-gate-off", "the candidate model's routing-mix gate never refuses", "src/tinydancer/server/learning.py",
           "        if abs(after - before) > cfg.max_mix_shift and not cfg.allow_mix_shift:\n", "        if False:\n",
           (L + "test_a_flood_of_forged_outcomes_cannot_promote_a_model_by_itself",)),
    Mutant("learning-reference-veto-off", "a worse score on the trusted reference set does not veto",
           "src/tinydancer/server/learning.py",
           '        if new_ref["log_loss"] > old_ref["log_loss"]:\n', "        if False:\n",
           (L + "test_a_trusted_reference_set_vetoes_what_the_logs_approve",)),
    Mutant("learning-query-mix-gate-off", "the query router's routing-mix gate never refuses", "src/tinydancer/server/learning.py",
           "    gate_ok = shift <= cfg.max_mix_shift or cfg.allow_mix_shift\n", "    gate_ok = True\n",
           (QL + "test_a_drifted_world_is_learned_from_feedback_and_promoted",)),
    Mutant("learning-correction-advantage-sign", "a corrected outcome moves a pair router's advantage the wrong way",
           "src/tinydancer/server/learning.py",
           "        changes[:, m] = np.where(picked == router.strong, 0.5, -0.5) * changes[rows, picked]\n",
           "        changes[:, m] = np.where(picked == router.strong, -0.5, 0.5) * changes[rows, picked]\n",
           (QL + "test_a_pair_routers_corrected_outcome_moves_its_quality_and_advantage_not_its_counts",)),
    Mutant("learning-correction-of-unseen-outcome", "a correction of an outcome the memory never counted replaces nothing "
           "real (its observation is lost)", "src/tinydancer/server/learning.py",
           "            if old is not None and old[2] is not None and old[2] <= done:\n",
           "            if old is not None:\n",
           (QL + "test_a_pair_routers_corrected_outcome_moves_its_quality_and_advantage_not_its_counts",)),
    # ------------------------------------------------------------------ labelling
    Mutant("labelling-journal-not-read", "a rerun does not read the journal (pays again)", "src/tinydancer/gateway/labelling.py",
           '                self.entries[entry["key"]] = entry\n', "                pass\n",
           (LB + "test_a_rerun_pays_only_for_what_is_missing",)),
    Mutant("labelling-budget-ignored", "--max-dollars stops nothing", "src/tinydancer/server/grading.py",
           "        return self.cap is None or self.spent + self.reserved + amount <= self.cap\n", "        return True\n",
           (LB + "test_dry_run_spends_nothing_and_the_budget_stops_spending",)),
    Mutant("labelling-in-flight-ignored", "--max-dollars forgets what calls in flight have reserved",
           "src/tinydancer/server/grading.py",
           "        return self.cap is None or self.spent + self.reserved + amount <= self.cap\n",
           "        return self.cap is None or self.spent + amount <= self.cap\n",
           (LBB + "test_calls_in_flight_count_against_the_cap",)),
    # ------------------------------------------------------------------ gateway: hostile clients and upstreams (issue 25)
    Mutant("gateway-nan-forwarded", "NaN and Infinity in a body pass the door", "src/tinydancer/gateway/request_body.py",
           "    if odd:\n", "    if False:\n",
           (H + "test_a_hostile_body_is_a_400_naming_its_field",)),
    Mutant("gateway-depth-unbounded", "a body of any depth is taken", "src/tinydancer/gateway/request_body.py",
           "        if depth > limit:\n            return True\n", "        if False:\n            return True\n",
           (H + "test_the_depth_limit_counts_every_level_once",)),
    Mutant("gateway-usage-trusted", "an upstream's token counts are believed whatever they are", "src/tinydancer/gateway/sse.py",
           "    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:\n",
           "    if isinstance(value, bool):\n",
           (H + "test_impossible_token_counts_are_logged_as_unknown_and_never_fail_the_client",)),
    Mutant("gateway-answer-unbounded", "an answer of any size is read", "src/tinydancer/gateway/upstream.py",
           "                if seen > limit:\n", "                if False:\n",
           (H + "test_an_answer_over_the_size_limit_is_an_upstream_failure",)),
    Mutant("gateway-redirect-followed", "an upstream's redirect is followed (the prompt goes to another host)",
           "src/tinydancer/gateway/upstream.py",
           "                                             allow_redirects=False)\n", "                                             allow_redirects=True)\n",
           (H + "test_a_redirect_from_an_upstream_is_not_followed",)),
    Mutant("gateway-non-answer-relayed", "a 200 carrying HTML or an error object is relayed as an answer",
           "src/tinydancer/gateway/upstream.py",
           '        if not isinstance(answer, dict) or answer.get("error") is not None or not isinstance(answer.get("choices"), list):\n',
           "        if False:\n",
           (H + "test_a_200_that_is_not_an_answer_is_an_upstream_failure",)),
    Mutant("gateway-busy-blamed", "a full queue counts against the upstream's breaker and model", "src/tinydancer/gateway/forwarding.py",
           '        if failure.kind == "busy":  # the call was never made', '        if False:  # the call was never made',
           (H + "test_a_full_queue_answers_503_with_retry_after_and_blames_no_one",)),
    Mutant("gateway-queue-time-blamed", "waiting for a slot counts against the upstream's timeout", "src/tinydancer/gateway/upstream.py",
           "            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, ttl_dns_cache=300)\n",
           "            connector = aiohttp.TCPConnector(limit=self.config.max_concurrency, ttl_dns_cache=300)\n"
           "            self._slots = asyncio.Semaphore(10**6)\n",
           (H + "test_waiting_for_a_slot_is_not_upstream_time",)),
    Mutant("gateway-stream-cancel-ignored", "a streamed call whose client left before the first byte goes on",
           "src/tinydancer/gateway/routes.py",
           "    return await until_disconnect(work, request.receive)\n",
           "    if body.get('stream') is True:\n        return await work\n    return await until_disconnect(work, request.receive)\n",
           (H + "test_a_streamed_call_whose_client_leaves_before_the_first_byte_is_cancelled",)),
    Mutant("gateway-session-unbounded", "an x-session-id of any length is kept", "src/tinydancer/gateway/routes.py",
           "    if session is not None and len(session) > limit:\n", "    if False:\n",
           (H + "test_an_oversized_session_id_is_refused",)),
    Mutant("service-metric-raw-path", "error metrics are labelled with the raw path", "src/tinydancer/server/metrics.py",
           '        return path if path in self.endpoints else "unmatched"\n', "        return path\n",
           (H + "test_junk_paths_do_not_grow_the_metrics",)),
    Mutant("service-body-deadline-ignored", "a body trickled in under the per-read timeout has no deadline",
           "src/tinydancer/server/middleware.py",
           "                deadline = now + self.deadline_s\n", "                deadline = now + 1e9\n",
           (H + "test_a_body_trickled_in_under_the_read_timeout_still_meets_a_whole_body_deadline",)),
    Mutant("gateway-batch-failure-shared", "one bad prompt fails every prompt embedded with it", "src/tinydancer/gateway/scoring.py",
           "                        await self._one_by_one(batch)\n",
           "                        [_settle(f, exc) for _, f in batch]\n",
           (H + "test_one_bad_prompt_does_not_fail_the_batch_it_shares",)),
    Mutant("gateway-embed-queue-unbounded", "routed prompts queue without bound instead of a 503 at max_embed_queue",
           "src/tinydancer/gateway/scoring.py", "        if len(self._waiting) >= self.max_queue:\n", "        if False:\n",
           (GE + "test_a_full_embedding_queue_answers_503_at_once_and_named_calls_go_on",)),
    Mutant("storage-bad-row-joins-batch", "a row with an impossible value joins the group commit",
           "src/tinydancer/server/storage/base.py",
           "    if _fits(row, _BY_KIND[table], _REQUIRED[table]):", "    if True:",
           (SF + "test_an_impossible_token_count_is_logged_as_unknown_and_fails_no_other_row",)),
    # ------------------------------------------------------------------ the LiteLLM integration
    Mutant("litellm-choice-ignored", "the strategy picks the router's worst model",
           "src/tinydancer/integrations/litellm_routing.py",
           "        return [self.router.models[i] for i in order], quality\n",
           "        return [self.router.models[i] for i in reversed(order)], quality\n",
           (LL + "test_calls_land_on_the_deployment_our_router_chose_and_outcomes_reach_storage",)),
    Mutant("litellm-retry-new-decision", "each retry or fallback of a call is decided (and logged) anew",
           "src/tinydancer/integrations/litellm_routing.py",
           "            if tag is None:  # the call's first attempt: decide\n",
           "            if True:  # the call's first attempt: decide\n",
           (LF + "test_retries_and_a_fallback_are_attempts_of_one_decision",)),
    Mutant("litellm-failure-not-an-outcome", "a failed LiteLLM call is not logged as an outcome",
           "src/tinydancer/integrations/litellm_logger.py",
           "            outcomes.append(call.failure_outcome(rank))\n", "            pass\n",
           (LL + "test_calls_land_on_the_deployment_our_router_chose_and_outcomes_reach_storage",)),
    Mutant("litellm-budget-no-wake-up-slack", "the strategy waits to the deadline itself, so the event loop's late "
           "wake-up comes on top of the budget", "src/tinydancer/integrations/litellm_routing.py",
           "    return deadline - now - WAKE_UP_SLACK_S\n", "    return deadline - now\n",
           (LF + "test_the_budget_counts_from_the_calls_start_and_leaves_room_for_the_wake_up",)),
    # ------------------------------------------------------------------ LiteLLM: judged samples and exploration (issue 31)
    Mutant("litellm-judge-grades-not-written", "the LiteLLM judge grades sampled answers but writes no outcome",
           "src/tinydancer/integrations/litellm_judge.py", "            self.write(sample, score)\n", "            pass\n",
           (LLL,)),
    Mutant("litellm-explored-propensity-not-logged", "an explored LiteLLM call's decision is logged without its propensity",
           "src/tinydancer/integrations/litellm_logger.py",
           '                propensity=tag.get("propensity"), explored=tag.get("explored")))\n', "                ))\n",
           (LLL,)),
    Mutant("litellm-judge-budget-ignored", "the LiteLLM judge grades past its daily dollars",
           "src/tinydancer/integrations/litellm_judge.py", "            fits = self.gate.reserve(worst)\n",
           "            fits = True\n",
           ("tests/test_litellm_learning.py::test_the_litellm_judge_stops_at_its_daily_dollars_and_resumes_the_next_utc_day",)),
    # ------------------------------------------------------------------ judged samples (issue 27)
    Mutant("judge-keeps-unsampled-streams", "every routed stream's answer is gathered and judged, sampled or not",
           "src/tinydancer/gateway/judging.py",
           "        return AnswerGather() if routed and self.draw() else None\n",
           "        return AnswerGather() if routed or self.draw() else None\n",
           (J + "test_a_seeded_sample_is_graded_and_only_sampled_answers_are_kept",)),
    Mutant("judge-budget-ignored", "the judge grades past its daily budget", "src/tinydancer/server/grading.py",
           "        if not self.budget.draw([0.0], worst):\n", "        if False:\n",
           (J + "test_the_judge_stops_at_the_daily_budget_and_resumes_the_next_utc_day",)),
    # ------------------------------------------------------------------ the conformal p-value
    Mutant("conformal-p-value-plus-one", "the conformal p-value without its +1", "src/tinydancer/candidates/uncertainty.py",
           "        return (self.n - below + 1.0) / (self.n + 1.0)\n", "        return (self.n - below) / (self.n + 1.0)\n",
           (P + "test_conformal_p_values_count_the_new_point_itself",)),
    Mutant("conformal-uncertainty-denominator", "the uncertainty table divides by n, not n + 1",
           "src/tinydancer/candidates/uncertainty.py",
           "        self._by_count = 1.0 - np.arange(self.n + 1) / (self.n + 1.0)\n",
           "        self._by_count = 1.0 - np.arange(self.n + 1) / self.n\n",
           (P + "test_conformal_p_values_count_the_new_point_itself",)),
    # ------------------------------------------------------------------ the core network and its files
    Mutant("nn-normalize-scale", "normalize() shrinks every column 10,000x", "src/tinydancer/nn/data.py",
           "        stds = flat.std(axis=0)\n", "        stds = flat.std(axis=0) * 1e4\n",
           ("tests/test_training.py::test_normalize_gives_zero_mean_unit_or_zero_spread",
            "tests/test_training.py::test_training_learns_the_seed_example")),
    Mutant("nn-normalized-features", "normalized features divided by 10,000 (stds reported unchanged)",
           "src/tinydancer/nn/normalization.py",
           "        return ((x - self.means) / self.stds).astype(np.float32)",
           "        return ((x - self.means) / self.stds / 1e4).astype(np.float32)",
           ("tests/test_training.py::test_training_learns_the_seed_example",)),
    Mutant("nn-watcher-blind", "a watcher that never reads the files", "src/tinydancer/server/state.py",
           "        events = []\n        serves_model =", "        events = []\n        return events\n        serves_model =",
           (L + "test_service_hot_reloads_a_promoted_file",)),
    Mutant("nn-distillation-t2", "distillation without the T^2 factor", "src/tinydancer/nn/losses.py",
           "        per_sample = a * t * t * soft + (1.0 - a) * hard\n        dlogits = a * t * t * d_soft + (1.0 - a) * d_hard",
           "        per_sample = a * soft + (1.0 - a) * hard\n        dlogits = a * d_soft + (1.0 - a) * d_hard",
           ("tests/test_training.py::test_distillation_loss_is_the_documented_formula",)),
    Mutant("nn-l2-everything", "L2 on every parameter (biases, zeta, nu too)", "src/tinydancer/nn/training.py",
           "            w = model.flat * model.weight_mask()", "            w = model.flat.copy()",
           ("tests/test_model.py::test_l2_penalises_the_weight_matrices_and_nothing_else",)),
    Mutant("nn-save-not-atomic", "a save that writes the target in place (not atomic)", "src/tinydancer/_io.py",
           "        os.replace(tmp, target)", "        target.write_bytes(data)\n        os.unlink(tmp)",
           ("tests/test_files.py::test_a_save_that_dies_midway_leaves_the_old_file_whole",)),
    Mutant("nn-calibration-ignored", "the router ignores the stored calibration scores", "src/tinydancer/candidates/uncertainty.py",
           "        return None if scores is None else cls(scores)",
           "        return None if scores is None else cls(np.linspace(0, 0.5, 200))",
           ("tests/test_routing.py::test_uncertainty_means_the_alternative_is_ruled_out",)),
    Mutant("nn-cell-gate-sign", "the FastGRNN update adds the gate term instead of subtracting it", "src/tinydancer/nn/cell.py",
           "        h_new = (plan.alpha - plan.beta * t_gate) * cand\n", "        h_new = (plan.alpha + plan.beta * t_gate) * cand\n",
           ("tests/test_model.py::test_inference_matches_the_paper_equations",)),
    Mutant("nn-one-step-gate-sign", "the router's one-step FastGRNN pass adds the gate term", "src/tinydancer/nn/cell.py",
           "    np.subtract(np.float32(plan.alpha) if a.dtype == np.float32 else plan.alpha, h, out=h)\n",
           "    np.add(np.float32(plan.alpha) if a.dtype == np.float32 else plan.alpha, h, out=h)\n",
           (RT + "test_the_fast_features_and_scores_equal_plain_computations",)),
    Mutant("nn-backward-gate", "backpropagation through time forgets the gate on the carried state", "src/tinydancer/nn/cell.py",
           "        dh = dh * z\n", "        dh = dh\n",
           ("tests/test_model.py::test_every_gradient_matches_finite_differences",)),
    # issue 26: what a process says it serves, the cost weight's scale, the default grader
    Mutant("info-gateway-router-unreported", "a gateway's /info and readiness describe no router (query_router null)",
           "src/tinydancer/gateway/state.py", "        service.query_router_info = lambda:", "        _unused = lambda:",
           ("tests/test_info.py::test_a_gateway_reports_the_router_it_routes_with",)),
    Mutant("info-candidate-loaded-anyway", "a query-router service loads the default candidate model all the same",
           "src/tinydancer/server/state.py", "        if settings.require_candidate_model:\n            self._try_load()",
           "        if True:\n            self._try_load()",
           ("tests/test_info.py::test_a_query_router_service_serves_no_candidate_model",)),
    Mutant("cost-weight-in-dollars", "the cost weight multiplies dollars again (0, 1 and 100 choose alike at real prices)",
           "src/tinydancer/llm/query_router.py", "        return np.argmax(quality - lam * self.relative_costs, axis=1)",
           "        return np.argmax(quality - lam * self.costs, axis=1)",
           ("tests/test_query_router.py::test_cost_weights_0_1_and_100_route_differently_at_real_prices",)),
    Mutant("label-default-judge", "label's default grader is the 1-10 judge again",
           "src/tinydancer/gateway/labelling.py", 'else "pairwise"', 'else "judge"',
           (LB + "test_pairwise_is_the_default_grader_without_references",)),
    Mutant("nn-adam-bias-correction", "Adam without its bias correction", "src/tinydancer/nn/optim.py",
           "        step = lr * math.sqrt(bc2) / bc1\n", "        step = lr\n",
           ("tests/test_training.py::test_one_adam_step_by_hand",)),
    # ------------------------------------------------------------------ the dashboard (issue 28)
    Mutant("dashboard-window-edge-dropped", "the partial hour at a window's start is left out of its totals",
           "src/tinydancer/server/report.py", "    if since is not None and boundary is not None and boundary > since:",
           "    if False:", (D + "test_report_totals_equal_sql_in_every_window_with_rollups_kept_through_deletes[sqlite]",)),
    Mutant("dashboard-saved-tokens-swapped", "the counterfactual prices prompt tokens at the output price",
           "src/tinydancer/server/report.py", 'price.cost(totals["prompt_tokens"], totals["completion_tokens"])',
           'price.cost(totals["completion_tokens"], totals["prompt_tokens"])',
           (D + "test_report_totals_equal_sql_in_every_window_with_rollups_kept_through_deletes[sqlite]",)),
    Mutant("dashboard-rollup-deletes-kept", "retention's deletes stay in SQLite's rollups", "src/tinydancer/server/storage/rollups.py",
           '    {_sqlite_trigger("OLD", -1)}\n', "",
           (D + "test_report_totals_equal_sql_in_every_window_with_rollups_kept_through_deletes[sqlite]",)),
    Mutant("dashboard-key-calls-by-attempt", "spend per key counts a fallback's attempts as calls", "src/tinydancer/server/report.py",
           '        k["calls"] += firsts\n', '        k["calls"] += attempts\n',
           (D + "test_report_totals_equal_sql_in_every_window_with_rollups_kept_through_deletes[sqlite]",)),
    Mutant("dashboard-key-rollup-wrong-column", "SQLite's rollup files each call under its model, not its key name",
           "src/tinydancer/server/storage/rollups.py", "COALESCE({row}.key_name, '')", "COALESCE({row}.target, '')",
           (D + "test_report_totals_equal_sql_in_every_window_with_rollups_kept_through_deletes[sqlite]",)),
    Mutant("dashboard-key-backfill-drops-names", "the rollup migration's backfill files every logged call under no key",
           "src/tinydancer/server/storage/rollups.py", "upstream, target, status, COALESCE(key_name, ''), COUNT(*),",
           "upstream, target, status, '', COUNT(*),",
           (D + "test_the_rollup_migrations_backfill_equals_what_its_triggers_kept[sqlite]",)),
    Mutant("dashboard-key-saved-tokens-swapped", "a key's calls at the dearest upstream price its prompt tokens as output",
           "src/tinydancer/server/report.py", 'top.cost(k["prompt_tokens"], k["completion_tokens"])',
           'top.cost(k["completion_tokens"], k["prompt_tokens"])',
           (D + "test_report_totals_equal_sql_in_every_window_with_rollups_kept_through_deletes[sqlite]",)),
    Mutant("dashboard-session-never-expires", "an expired dashboard cookie still signs in", "src/tinydancer/server/guards.py",
           "    if not expires.isdigit() or int(expires) < (time.time() if now is None else now):",
           "    if not expires.isdigit():", (D + "test_dashboard_auth_cookie_and_open_loopback",)),
    Mutant("features-refusal", "a router takes vectors made without the prompt features it was trained with",
           "src/tinydancer/llm/query_router.py", "        if value.id != self.embedder_id:\n",
           "        if False:\n",
           ("tests/test_prompt_features.py::test_a_router_without_features_refuses_featured_vectors_and_unknown_feature_versions_are_refused",
            "tests/test_prompt_features.py::test_cross_validation_keeps_the_features_where_they_carry_the_signal_and_the_file_records_them")),
    Mutant("features-cv-ignored", "the prompt features are never kept, whatever the folds say",
           "src/tinydancer/llm/router_fit.py", "    chosen = _best(folds, prefer_first=True)\n",
           "    chosen = next(iter(folds))\n",
           ("tests/test_prompt_features.py::test_cross_validation_keeps_the_features_where_they_carry_the_signal_and_the_file_records_them",)),
    # ------------------------------------------------------------------ issue 29's leftovers: latency, the default embedder
    Mutant("gateway-inline-unbounded", "a cheap embedder embeds a prompt of any length on the event loop",
           "src/tinydancer/gateway/scoring.py", "        if not self._busy and len(text) <= self.inline_chars:\n",
           "        if not self._busy:\n",
           (GE + "test_a_short_prompt_of_a_cheap_embedder_is_embedded_on_the_loop_and_a_long_one_off_it",)),
    Mutant("gateway-inline-never", "a short prompt still hops to a worker thread for a 0.1 ms embedding",
           "src/tinydancer/gateway/scoring.py", '        self.inline_chars = int(getattr(embedder, "inline_chars", 0) or 0)\n',
           "        self.inline_chars = 0\n",
           (GE + "test_a_short_prompt_of_a_cheap_embedder_is_embedded_on_the_loop_and_a_long_one_off_it",)),
    Mutant("static-one-text-first-piece", "one prompt alone is embedded as its first piece, unlike its batch row",
           "src/tinydancer/llm/static_embedder.py", "            out[0] = np.add.reduceat(table[ids], [0], axis=0)[0]\n",
           "            out[0] = table[ids[0]]\n",
           ("tests/test_static_embedder.py::test_a_prompt_is_the_normalized_sum_of_its_pieces",)),
    Mutant("static-build-silent", "the first use builds the static table for tens of seconds without a word",
           "src/tinydancer/llm/static_embedder.py", "content_ranks(tokens), self._dim, progress=lines.advance)",
           "content_ranks(tokens), self._dim)",
           ("tests/test_static_embedder.py::test_builds_are_identical_and_cached_atomically",)),
    Mutant("gateway-live-share-unset", "the live strong-share gauge is never read from the window",
           "src/tinydancer/gateway/state.py", "        self.metrics.live_strong_share.set_function(self.tally.strong_share)\n",
           "",
           (GL + "test_the_live_strong_share_meets_the_configured_one_on_traffic_unlike_the_training_data",)),
    Mutant("router-train-default-minilm", "router train reads prompts with MiniLM unless told otherwise",
           "src/tinydancer/cli/router.py", '    embedder: str = typer.Option("static", help="Embedder for rows',
           '    embedder: str = typer.Option("minilm", help="Embedder for rows',
           ("tests/test_query_router.py::test_router_train_reads_prompts_with_the_static_embedder_unless_told_otherwise",)),
    Mutant("cv-groups-ignored", "cross-validation given source groups still cuts random folds of the pooled table",
           "src/tinydancer/llm/selection.py",
           "    folds = kfold(problem.n, cfg.folds, cfg.seed) if problem.groups is None else group_kfold(problem.groups, cfg.folds, cfg.seed)\n",
           "    folds = kfold(problem.n, cfg.folds, cfg.seed)\n",
           ("tests/test_selection.py::test_grouped_folds_choose_the_input_that_carries_to_a_new_source",)),
    Mutant("group-kfold-splits-groups", "grouped folds deal rows out in turn, splitting each group across folds",
           "src/tinydancer/llm/selection.py", "    row_fold = fold_of[codes]\n", "    row_fold = np.arange(len(codes)) % folds\n",
           ("tests/test_selection.py::test_grouped_folds_partition_the_rows_and_never_split_a_group",)),
    Mutant("features-code-shortcut-too-eager", "code notation reads 0 when a line starts with a keyword but no symbol is there",
           "src/tinydancer/llm/prompt_features.py",
           "    if _CODE_HINT.search(head) is None and not any(line.lstrip().startswith(_CODE_WORDS) for line in",
           "    if _CODE_HINT.search(head) is None or not any(line.lstrip().startswith(_CODE_WORDS) for line in",
           ("tests/test_prompt_features.py::test_the_shortcuts_leave_every_value_as_the_patterns_give_it",)),
    Mutant("features-math-shortcut-misses-powers", "math notation reads 0 for x^2 with no other notation",
           "src/tinydancer/llm/prompt_features.py", '_MATH_SYMBOL = re.compile(r"[$\\\\^∑∫√≤≥π∞]")',
           '_MATH_SYMBOL = re.compile(r"[$\\\\∑∫√≤≥π∞]")',
           ("tests/test_prompt_features.py::test_the_shortcuts_leave_every_value_as_the_patterns_give_it",)),
    Mutant("table-subset-stale-meta", "a subset keeps the whole table's per-row meta arrays (a contamination mask out of line)",
           "src/tinydancer/llm/tables.py",
           "        meta = {k: v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v\n",
           "        meta = {k: v if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n else v\n",
           ("tests/test_query_router.py::test_a_subset_cuts_the_per_row_arrays_of_its_meta_with_its_rows",)),
    Mutant("cli-error-wraps", "a long error is wrapped at the console's width, a path split across lines",
           "src/tinydancer/cli/common.py", '{escape(str(exc))}", soft_wrap=True)', '{escape(str(exc))}")',
           ("tests/test_cli.py::test_an_error_is_one_line_at_any_width_and_its_brackets_are_printed_as_they_are",)),
    Mutant("cli-error-markup", "an error's own brackets are read as rich markup and vanish",
           "src/tinydancer/cli/common.py", '{escape(str(exc))}", soft_wrap=True)', '{exc}", soft_wrap=True)',
           ("tests/test_cli.py::test_an_error_is_one_line_at_any_width_and_its_brackets_are_printed_as_they_are",)),
    Mutant("fit-default-minilm", "QueryRouter.fit embeds a bare table with MiniLM, unlike router train",
           "src/tinydancer/llm/router_fit.py", '            embedder = make_embedder("static")', '            embedder = make_embedder("minilm")',
           ("tests/test_query_router.py::test_router_train_reads_prompts_with_the_static_embedder_unless_told_otherwise",)),
]


def check_list(mutants: list[Mutant]) -> list[str]:
    """What no longer fits the code: a snippet not found exactly once, a file gone, a duplicate id."""
    problems = []
    seen: set[str] = set()
    for m in mutants:
        if m.id in seen:
            problems.append(f"{m.id}: the id is used twice")
        seen.add(m.id)
        path = ROOT / m.file
        if not path.is_file():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        n = path.read_text(encoding="utf-8").count(m.old)
        if n != 1:
            problems.append(f"{m.id}: its original snippet is found {n} times in {m.file} (must be exactly once: "
                            f"re-aim the mutant):\n    {m.old!r}")
        if m.old == m.new:
            problems.append(f"{m.id}: the replacement is the original")
    return problems


def check_tests(mutants: list[Mutant]) -> list[str]:
    """Every node id collects on the unmutated code (a renamed test would read as 'caught' by error)."""
    ids = sorted({t for m in mutants for t in m.tests})
    r = subprocess.run([str(PY), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *ids],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        return [f"the catching tests do not collect (exit {r.returncode}):\n{tail}"]
    return []


def source_copy(into: Path) -> Path:
    src = into / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return src


#: imported once by each worker, before any mutant: what a test run would otherwise import afresh
#: every time (seconds of each run on 2 cores).  Never tinydancer itself: that comes from the mutant's copy.
PRELOAD = ("numpy", "pydantic", "starlette", "fastapi", "uvicorn", "aiohttp", "httpx", "openai", "psycopg", "psycopg_pool",
           "typer", "rich", "yaml", "prometheus_client", "safetensors", "hypothesis", "pytest")

#: a worker: imports PRELOAD, then for each job on stdin forks a child that puts the mutant's
#: source first on sys.path and runs pytest.main in its own process group; says the child's pid,
#: then its exit status
_WORKER = r"""
import importlib, json, os, sys, threading
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        pass
if any(m == "tinydancer" or m.startswith("tinydancer.") for m in sys.modules) or threading.active_count() > 1:
    print(json.dumps({"unsafe": True}), flush=True)
    sys.exit(3)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.environ.update(job["env"])
            sys.dont_write_bytecode = True
            sys.path.insert(0, job["src"])
            os.chdir(job["cwd"])
            import pytest
            rc = int(pytest.main(job["args"]))
        except BaseException as exc:
            print(f"worker child: {exc!r}", file=sys.stderr)
            rc = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Worker:
    """A process with the heavy imports done, forking one pytest run per mutant."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(PY), "-c", _WORKER, *PRELOAD], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        first = json.loads(self.proc.stdout.readline() or "{}")  # type: ignore[union-attr]
        if not first.get("ready"):
            raise RuntimeError("the preloading worker could not start safely (use --no-preload)")

    def run(self, src: Path, args: list[str], env: dict[str, str], log: Path, timeout_s: float) -> int | None:
        """pytest's exit status, or None when it ran past the timeout (its process group is killed)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"src": str(src), "args": args, "env": env, "log": str(log), "cwd": str(ROOT)}) + "\n")
        pid = json.loads(self.proc.stdout.readline())["pid"]
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            json.loads(self.proc.stdout.readline())
            return None
        return int(json.loads(self.proc.stdout.readline())["rc"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def _plain_run(args: list[str], env: dict[str, str], log: Path, timeout_s: float) -> int | None:
    with open(log, "w") as out:
        proc = subprocess.Popen([str(PY), "-m", "pytest", *args], cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def run_mutant(m: Mutant, timeout_s: float, worker: Worker | None) -> dict[str, object]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="td-mutant-") as tmp:
        src = source_copy(Path(tmp))
        target = src / Path(m.file).relative_to("src")
        text = target.read_text(encoding="utf-8")
        target.write_text(text.replace(m.old, m.new, 1), encoding="utf-8")
        # subprocesses the tests start (tinydancer serve, ...) import the mutant too
        env = {"PYTHONPATH": os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])]),
               "PYTHONDONTWRITEBYTECODE": "1"}
        args = ["-x", "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=", *m.tests]
        log = Path(tmp) / "pytest.log"
        rc = worker.run(src, args, env, log, timeout_s) if worker is not None else _plain_run(args, env, log, timeout_s)
        out = log.read_text(errors="replace") if log.exists() else ""
    seconds = time.monotonic() - started
    if rc is None:
        return {"result": "TIMEOUT", "by": f"no answer in {timeout_s:.0f} s", "seconds": seconds}
    # the short summary's lines (-rfE), not captured log lines that start with a level name
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in out.splitlines()
              if line.startswith(("FAILED tests/", "ERROR tests/"))]
    if rc == 1 and failed:
        result, by = "caught", ", ".join(f.replace("tests/", "") for f in failed)
    elif rc == 0:
        result, by = "SURVIVED", "every catching test passed"
    else:  # 2 interrupted, 3 internal error, 4 usage (a test id that does not exist), 5 nothing collected
        last = out.strip().splitlines()[-1] if out.strip() else ""
        result, by = "ERROR", f"pytest exit {rc}: {last[:200]}"
    return {"result": result, "by": by, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", type=Path, help="also write the markdown report to this file")
    ap.add_argument("-k", dest="select", help="only the mutants whose id contains one of these texts (comma-separated)")
    ap.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant (default 180)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-preload", action="store_true", help="a fresh python per mutant instead of forking a worker "
                    "that has the heavy imports done (slower; for debugging the check itself)")
    ap.add_argument("--check-tests", action="store_true", help="first collect every catching test on the unmutated code "
                    "(a test id that does not exist also shows as ERROR on its mutant)")
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.select or any(s and s in m.id for s in args.select.split(","))]
    if args.list:
        for m in mutants:
            print(f"{m.id:45} {m.file}: {m.what}")
        return 0
    if not mutants:
        print(f"no mutant id contains {args.select!r}", file=sys.stderr)
        return 2
    problems = check_list(MUTANTS) or (check_tests(mutants) if args.check_tests else [])
    if problems:
        print("MUTATION CHECK CANNOT RUN: the mutant list no longer fits the code\n" + "\n".join(problems), file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"{len(mutants)} mutants, {args.jobs} at a time", flush=True)
    jobs = max(args.jobs, 1)
    workers: queue.Queue[Worker | None] = queue.Queue()
    started_workers = [] if args.no_preload else [Worker() for _ in range(jobs)]
    for w in started_workers or [None] * jobs:
        workers.put(w)

    def one(m: Mutant) -> dict[str, object]:
        w = workers.get()
        try:
            return run_mutant(m, args.timeout, w)
        finally:
            workers.put(w)

    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(one, m) for m in mutants]
            results = []
            for m, f in zip(mutants, futures):
                res = f.result()
                results.append(res)
                print(f"  {res['result']:8} {m.id} ({res['seconds']:.1f} s): {res['by']}", flush=True)
    finally:
        for w in started_workers:
            w.close()
    caught = sum(r["result"] == "caught" for r in results)
    total_s = time.monotonic() - started
    lines = ["# Mutation check", "",
             f"{caught} of {len(mutants)} mutants caught in {total_s:.0f} s ({args.jobs} at a time).", "",
             "| # | mutant | what it breaks | file | result | caught by | s |", "|---|---|---|---|---|---|---|"]
    for i, (m, r) in enumerate(zip(mutants, results), 1):
        by = re.sub(r"\|", "\\|", str(r["by"]))
        lines.append(f"| {i} | `{m.id}` | {m.what} | `{m.file.removeprefix('src/tinydancer/')}` | {r['result']} | {by} | "
                     f"{r['seconds']:.1f} |")
    report = "\n".join(lines) + "\n"
    print("\n" + report)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report, encoding="utf-8")
    if caught != len(mutants):
        print(f"MUTATION CHECK FAILED: {len(mutants) - caught} mutant(s) not caught (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
