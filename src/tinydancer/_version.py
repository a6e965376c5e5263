"""The package version, in one place (the service reports it)."""

__version__ = "0.1.0"
