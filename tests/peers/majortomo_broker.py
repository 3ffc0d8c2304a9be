#!/usr/bin/env python3
"""majortomo 0.2.0's own broker (PyPI), unchanged, on a port the system picks, so tests can
see scale0's workers against a Majordomo broker nobody here wrote.

Usage:
    majortomo_broker.py [--bind tcp://127.0.0.1:*]

Prints "listening ENDPOINT" (the port read back) once bound, then serves until killed.
It drives majortomo's `Broker` through its own `bind`, `receive` and `handle_message`:
`Broker.run` binds too and offers no way to learn a port picked by the system.

Needs: pip install majortomo six pyzmq (majortomo 0.2.0 imports `six` without declaring it).
"""
import argparse
import sys

import zmq
from majortomo.broker import Broker

from loopback import loopback


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", type=loopback, default="tcp://127.0.0.1:*")
    args = parser.parse_args()
    broker = Broker(bind=args.bind)
    broker.bind()
    endpoint = broker._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    print("listening", endpoint, flush=True)
    try:
        while True:
            message = broker.receive()
            if message:
                broker.handle_message(message)
    finally:
        broker.close()


if __name__ == "__main__":
    sys.exit(main())
