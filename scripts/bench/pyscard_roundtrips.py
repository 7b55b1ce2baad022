#!/usr/bin/python3
"""APDU round trips per second from pyscard, the PC/SC client most scripts use.

Usage: pyscard_roundtrips.py SECONDS READER [READER ...]

Connects to the card in each READER and sends the 5-byte case-2 command 00 84 00 00 08
(GET CHALLENGE) back to back, in bursts of about 50 ms that alternate between the readers, for
SECONDS in total, so that drift on the machine hits every reader alike. Prints one JSON object:
{"READER": {"round_trips": n, "seconds": s, "per_second": r, "last_sw": "9000"}, ...}.
Run it with the system Python (Debian's python3-pyscard): /usr/bin/python3.
"""
import json
import sys
import time

from smartcard.System import readers

APDU = [0x00, 0x84, 0x00, 0x00, 0x08]
BURST = 0.05


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    seconds = float(sys.argv[1])
    names = sys.argv[2:]
    available = {str(r): r for r in readers()}
    connections = []
    for name in names:
        if name not in available:
            sys.exit("no reader named %r; readers: %s" % (name, sorted(available)))
        connection = available[name].createConnection()
        connection.connect()
        connections.append(connection)
    stats = {name: {"round_trips": 0, "seconds": 0.0, "last_sw": ""} for name in names}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for name, connection in zip(names, connections):
            n = 0
            start = time.perf_counter()
            stop = start + BURST
            while True:
                data, sw1, sw2 = connection.transmit(APDU)
                n += 1
                if n % 16 == 0 and time.perf_counter() >= stop:
                    break
            stats[name]["round_trips"] += n
            stats[name]["seconds"] += time.perf_counter() - start
            stats[name]["last_sw"] = "%02X%02X" % (sw1, sw2)
    for connection in connections:
        connection.disconnect()
    for s in stats.values():
        s["per_second"] = s["round_trips"] / s["seconds"]
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
