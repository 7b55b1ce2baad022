#!/usr/bin/python3
"""APDU round trips per second from pyscard, the PC/SC client most scripts use.

Usage: pyscard_roundtrips.py READER [SECONDS]

Connects to the card in READER, sends the 5-byte case-2 command 00 84 00 00 08 (GET CHALLENGE
shape) back to back for SECONDS (default 2), and prints one JSON line:
{"reader": ..., "round_trips": n, "seconds": s, "per_second": r, "last_sw": "9000"}.
Run it with the system Python (Debian's python3-pyscard): /usr/bin/python3.
"""
import json
import sys
import time

from smartcard.System import readers


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    name = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    matching = [r for r in readers() if str(r) == name]
    if not matching:
        sys.exit("no reader named %r; readers: %s" % (name, [str(r) for r in readers()]))
    connection = matching[0].createConnection()
    connection.connect()
    apdu = [0x00, 0x84, 0x00, 0x00, 0x08]
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        data, sw1, sw2 = connection.transmit(apdu)
        n += 1
        if n % 64 == 0 and time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    connection.disconnect()
    print(json.dumps({"reader": name, "round_trips": n, "seconds": elapsed,
                      "per_second": n / elapsed, "last_sw": "%02X%02X" % (sw1, sw2)}))


if __name__ == "__main__":
    main()
