"""The ``jetagent`` command (typer): run services, submit and follow work, debug."""

from jetagent.cli._app import app as app
from jetagent.cli._app import main as main

__all__ = ["app", "main"]
