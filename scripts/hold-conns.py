#!/usr/bin/env python3
"""hold-conns.py PORT N CA CERT KEY [PATH] — opens N mTLS connections to
127.0.0.1:PORT, sends one keep-alive GET PATH on each (so every connection is
fully established and has served a request), then holds them all idle.
Prints "held N" when all are up (or "held K of N" and the first error), then
waits for stdin to close (or SIGTERM) and exits, closing them.
Loopback only; used by scripts/bench-extra.sh to measure memory per idle
connection."""
import asyncio
import ssl
import sys


async def one(port, ctx, path, sem, conns, errors):
    async with sem:
        try:
            r, w = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 30
            )
            w.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            await w.drain()
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(r.readexactly(length), 30)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            conns.append((r, w))
        except Exception as e:  # noqa: BLE001 - report the first failure
            errors.append(repr(e))


async def main():
    port, n, ca, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    path = sys.argv[6] if len(sys.argv) > 6 else "/v1/orders"
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    sem = asyncio.Semaphore(64)
    conns, errors = [], []
    await asyncio.gather(*(one(port, ctx, path, sem, conns, errors) for _ in range(n)))
    if errors:
        print(f"held {len(conns)} of {n}; first error: {errors[0]}", flush=True)
    else:
        print(f"held {len(conns)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for _, w in conns:
        w.close()


asyncio.run(main())
