#!/usr/bin/env python3
"""fsync-latency.py FILE [N] — the disk's fdatasync latency as the strict
journal meets it: an 8 KiB overwrite of an allocated file (sled writes each
log segment out before using it) followed by fdatasync, N times (default
300). Prints the median, p10, p90 and mean, and the records per second that
latency allows at 64 records per flush. FILE is created and removed; put it
on the file system of the journal."""
import os
import statistics
import sys
import time

path = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
try:
    os.write(fd, b"\0" * (1 << 20))
    os.fsync(fd)
    buf = b"x" * 8192
    lat = []
    for i in range(n):
        os.pwrite(fd, buf, (i * 8192) % (1 << 20))
        t = time.perf_counter()
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
finally:
    os.close(fd)
    os.unlink(path)
lat.sort()
mean = statistics.mean(lat)
print(
    f"fdatasync of an 8 KiB overwrite, {n} runs: median {statistics.median(lat) * 1e3:.2f} ms, "
    f"p10 {lat[n // 10] * 1e3:.2f} ms, p90 {lat[n * 9 // 10] * 1e3:.2f} ms, mean {mean * 1e3:.2f} ms; "
    f"at 64 records per flush at most {64 / mean:.0f} records/s"
)
