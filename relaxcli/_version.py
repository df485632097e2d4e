"""The package version (one place; the checkpoint metadata records it)."""

__version__ = "0.2.0"
