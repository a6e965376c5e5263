"""Exceptions raised by Tiny Dancer.

Every error raised at a boundary (user data, model files, requests) is one of these, and its
message says what was wrong and what to do about it.  They subclass the built-in exception a
caller would naturally catch (``ValueError`` for bad input, ``OSError`` is *not* used for
corrupt files because the file exists and is readable: its *content* is wrong).
"""

from __future__ import annotations


class TinyDancerError(Exception):
    """Base class of every error raised by this package."""


class ValidationError(TinyDancerError, ValueError):
    """Input data has the wrong shape, type or values (NaN, Inf, out of range, ragged)."""


class ModelFileError(TinyDancerError, ValueError):
    """A model file is missing, corrupt, truncated or not a Tiny Dancer model."""


class NotFittedError(TinyDancerError, RuntimeError):
    """An operation needs something that was never computed (calibration, normalization)."""
