"""Test-wide settings: caches go to a temporary folder, never the user's home."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TINY_DANCER_CACHE", tempfile.mkdtemp(prefix="td-cache-"))
sys.path.insert(0, str(Path(__file__).parent))  # lets test modules share helpers


# ---------------------------------------------------------------------- no silent skips in CI
_SERVICE_WORDS = ("postgresql", "psycopg", "redis")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """Where the services are required (``TINY_DANCER_REQUIRE_SERVICES=1``, set by ``.ci/run``), a
    test that skips because a service is missing fails instead, whichever helper it skipped
    through (``tests/pg.py``'s already fails; this catches any other)."""
    from pg import REQUIRE_SERVICES, services_required

    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not services_required():
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if any(word in reason.lower() for word in _SERVICE_WORDS):
        report.outcome = "failed"
        report.longrepr = f"skipped for a missing service where {REQUIRE_SERVICES}=1 requires it: {reason}"
