"""The web console: server-rendered pages and actions over the control plane (DESIGN.md §11)."""

from ortserve.console.routes import Console

__all__ = ["Console"]
