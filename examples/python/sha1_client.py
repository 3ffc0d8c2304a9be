#!/usr/bin/env python3
"""A client on the scale0 package: sends each line of stdin to `sha1` (64 requests in
flight, retried with the same id after a timeout) and prints the replies in input order.

    pip install ./python
    printf 'a\\nb\\n' | python3 sha1_client.py [--connect tcp://localhost:5555]
"""

import argparse
import sys

import scale0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--connect", default="tcp://localhost:5555")
    p.add_argument("--service", default="sha1")
    p.add_argument("--in-flight", type=int, default=64)
    args = p.parse_args()
    lines = (line.rstrip("\n") for line in sys.stdin)
    with scale0.Client(args.connect) as client:
        try:
            for reply in client.map(args.service, lines, in_flight=args.in_flight):
                print(b"".join(reply).decode())
        except scale0.Scale0Error as e:
            print(f"sha1_client: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
