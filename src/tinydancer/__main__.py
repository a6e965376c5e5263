"""``python -m tinydancer ...`` runs the command line (same as the ``tinydancer`` script)."""

from .cli import app

app()
