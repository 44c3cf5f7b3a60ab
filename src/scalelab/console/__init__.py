"""The console: one page listing every running system with its health and links."""

from scalelab.console.app import create_app

__all__ = ["create_app"]
