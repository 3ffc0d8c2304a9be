"""A Majordomo (MDP/0.2) worker serving a Python function (work in progress)."""

from __future__ import annotations


class Worker:
    """A worker of one service on a scale0 broker."""
