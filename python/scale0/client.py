"""The blocking client of the scale0 native protocol (work in progress)."""

from __future__ import annotations


class Client:
    """A client of a scale0 broker speaking the native protocol, version 1."""
