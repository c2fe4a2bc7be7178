#!/usr/bin/env python3
"""Connection attacks on a running `sightline serve` (issue 16 §1, §5), for docs/reliability.md.

Loopback only, bounded (every mode stops by itself after --duration seconds), Python standard library only.
While the attack holds its sockets, a probe GETs /health on a fresh connection every 200 ms (5 s timeout each) and
records the latency or the failure; at the end, with the attack still on, one real embedding request is sent.

Modes:
  idle N        N TCP connections that never send a byte (keep-alive exhaustion).
  half-headers  N connections that send half a request head and stall.
  tls-flood N   N TCP connections to an HTTPS port that never send a ClientHello (probe over HTTPS, unverified).
  slow-body N   N authenticated POSTs declaring --body-bytes and sending all but one byte; reports the server's RSS.

Usage: scripts/conn_attack.py --url http://127.0.0.1:PORT --key KEY --mode idle --count 2000 [--server-pid PID]
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from pathlib import Path


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rss_kib(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Target:
    def __init__(self, url: str, key: str | None):
        u = urllib.parse.urlparse(url)
        if not loopback(u.hostname or ""):
            sys.exit(f"refusing a non-loopback URL: {url}")
        self.host, self.port, self.tls, self.key = u.hostname, u.port or 80, u.scheme == "https", key
        self.ctx = ssl._create_unverified_context() if self.tls else None

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 5.0):
        started = time.monotonic()
        conn = self.connection(timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if self.key:
                headers["Authorization"] = f"Bearer {self.key}"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status, time.monotonic() - started
        except (OSError, http.client.HTTPException) as e:
            return f"{type(e).__name__}", time.monotonic() - started
        finally:
            conn.close()


def attack(target: Target, mode: str, count: int, body_bytes: int, sockets: list, until: float) -> None:
    for _ in range(count):
        if time.monotonic() >= until:
            return
        try:
            s = socket.create_connection((target.host, target.port), timeout=5)
        except OSError:
            continue
        s.setblocking(False)
        try:
            if mode == "half-headers":
                s.send(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
            elif mode == "slow-body":
                head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {target.key}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {body_bytes}\r\n\r\n").encode()
                s.setblocking(True)
                s.settimeout(30)
                s.sendall(head + b" " * (body_bytes - 1))
                s.setblocking(False)
        except OSError:
            pass
        sockets.append(s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key")
    ap.add_argument("--mode", choices=["idle", "half-headers", "tls-flood", "slow-body"], required=True)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds the attack holds its sockets")
    ap.add_argument("--body-bytes", type=int, default=60 << 20)
    ap.add_argument("--server-pid", type=int)
    args = ap.parse_args()
    target = Target(args.url, args.key)
    rss_before = rss_kib(args.server_pid)
    started = time.monotonic()
    opened: list[socket.socket] = []
    until = started + args.duration
    opener = threading.Thread(target=attack, args=(target, args.mode, args.count, args.body_bytes, opened, until), daemon=True)
    opener.start()
    probes, peak = [], rss_before or 0
    while time.monotonic() < until:
        probes.append(target.request("GET", "/health"))
        peak = max(peak, rss_kib(args.server_pid) or 0)
        time.sleep(0.2)
    # Sockets opened by then; the attack stays on while the embedding request runs.
    sockets_opened = len(opened)
    embed = target.request("POST", "/v1/embeddings", json.dumps({"input": ["a dog in the snow"]}).encode(), 30)
    ok = [lat for status, lat in probes if status == 200]
    failed = [status for status, _ in probes if status != 200]
    lat = sorted(ok)
    report = {
        "mode": args.mode, "count": args.count, "sockets_opened": sockets_opened,
        "health_probes": len(probes), "health_ok": len(ok), "health_failed": len(failed),
        "health_failures": sorted(set(map(str, failed))),
        "health_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "health_max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "embed_during_attack": embed[0], "embed_ms": round(embed[1] * 1000, 1),
        "rss_before_mib": round(rss_before / 1024, 1) if rss_before else None,
        "rss_peak_mib": round(peak / 1024, 1) if peak else None,
    }
    opener.join(timeout=60)
    for s in opened:
        s.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
