"""Opens many connections to a server at once, holds them, then closes them all.

usage: many_connections.py ENDPOINT COUNT HOLD_S
For a server with fewer file descriptors than COUNT: it must say it is refusing
connections, and serve again once they are closed (the caller checks both).
"""

import sys
import time

import zmq


def main() -> int:
    endpoint, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    ctx = zmq.Context()
    sockets = []
    for _ in range(count):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        sockets.append(s)
    time.sleep(hold)
    for s in sockets:
        s.close()
    ctx.term()
    print(f"ok: {count} connections held {hold} s and closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
