"""Test-wide settings: caches go to a temporary folder, never the user's home."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TINY_DANCER_CACHE", tempfile.mkdtemp(prefix="td-cache-"))
sys.path.insert(0, str(Path(__file__).parent))  # lets test modules share helpers
