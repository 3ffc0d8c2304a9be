"""The endpoint check the majortomo peers share: test peers never reach beyond this host."""

import argparse

LOOPBACK_PREFIXES = ("tcp://127.0.0.1:", "tcp://localhost:", "tcp://[::1]:", "ipc://")


def loopback(endpoint: str) -> str:
    """Accepts loopback endpoints only (an argparse `type`)."""
    if not endpoint.startswith(LOOPBACK_PREFIXES):
        raise argparse.ArgumentTypeError("endpoint must be on loopback: %r" % endpoint)
    return endpoint
