"""Test-wide settings: caches go to a temporary folder, never the user's home."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

if "TINY_DANCER_CACHE" not in os.environ:
    os.environ["TINY_DANCER_CACHE"] = tempfile.mkdtemp(prefix="td-cache-")
    # the static embedder's token table (the packaged router reads prompts with it) takes 30-40 s
    # to build from MiniLM: copy the one `make embed` built into the user's cache, read-only there,
    # so no test session pays it (the table's name keys it by recipe, dimension and weights)
    import shutil

    for _table in (Path.home() / ".cache" / "tinydancer").glob("static-minilm-v*.npy"):
        shutil.copy2(_table, Path(os.environ["TINY_DANCER_CACHE"]) / _table.name)
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
