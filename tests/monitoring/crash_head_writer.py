"""Child process for test_head's kill -9 test: commits batches and says which are durable.

Usage: python crash_head_writer.py DIRECTORY. Batch b holds one sample per series
(SERIES of them) at t = b * 1000 with value b * 100 + series; "committed b" is printed only
after commit returned. Every 40 batches it truncates the head, printing "truncating T" first.
"""

from __future__ import annotations

import sys

from scalelab.monitoring.head import Head
from scalelab.monitoring.model import Labels

SERIES = 20


def labels(i: int) -> Labels:
    return (("__name__", "crash_test"), ("series", str(i)))


def main(directory: str) -> None:
    head = Head(directory, segment_bytes=16 << 10)
    start = 0 if head.maxt is None else head.maxt // 1000 + 1
    for b in range(start, start + 1_000_000):
        app = head.appender()
        for i in range(SERIES):
            app.append(labels(i), b * 1000, float(b * 100 + i))
        app.commit()
        print(f"committed {b}", flush=True)
        if b % 40 == 39:
            print(f"truncating {(b - 30) * 1000}", flush=True)
            head.truncate((b - 30) * 1000)


if __name__ == "__main__":
    main(sys.argv[1])
