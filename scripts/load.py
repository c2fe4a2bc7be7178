#!/usr/bin/env python3
"""Load generator for scripts/load.sh (issue 6, Scope 3). Python standard library only.

N concurrent clients mix valid images and texts with hostile inputs, hostile bodies, abandoned requests and the
ops routes against a running `sightline serve`, for a bounded time and a bounded number of requests, then stop.

It exits non-zero unless: every valid request gets a 200 whose vectors equal what each input gets alone (a
single-input baseline taken before the load; 1e-6 per component); every hostile input gets a 400 naming its
index; hostile bodies get a 400 naming the reason; nothing gets a 5xx or a transport error; the server is still
ready afterwards. It samples the server's memory from /proc/<pid>/status.

Loopback only: a URL whose host is not 127.0.0.0/8, ::1 or localhost is refused.

Usage:  scripts/load.py --url http://127.0.0.1:PORT --key KEY --server-pid PID [--clients 12] [--duration 180]
"""
from __future__ import annotations

import argparse
import base64
import http.client
import ipaddress
import json
import random
import socket
import sys
import threading
import time
import urllib.parse
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TEXTS = [
    "A dog in the snow",
    "a small red car near the beach at night",
    "Eine Katze schläft im Schnee",
    "Кошка спит на снегу",
    "一只猫在雪地里睡觉",
    "🐶 dog and 🐱 cat",
    "how big",
    "UDEMY online courses for python beginners",
]
# Odd but valid files of tests/fixtures/hostile/: embedded like any image.
ODD_VALID = ["1x10000.png", "10000x1.png", "1x10000.jpg", "exif-absurd.jpg", "exif-absurd.png",
             "progressive.jpg", "jpeg-bytes.png", "iccp-16mib.png"]
# Request classes and their weight in the mix.
CLASSES = [("valid-image", 26), ("valid-text", 18), ("valid-mixed", 14), ("hostile-image", 12),
           ("hostile-mixed", 8), ("hostile-body", 6), ("huge-valid", 4), ("abandoned", 8), ("ops", 4)]


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def memory(pid: int) -> tuple[int, int] | None:
    """VmRSS and VmHWM in KiB."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


class Load:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        url = urllib.parse.urlsplit(args.url)
        host = url.hostname or ""
        if not (host == "localhost" or _is_loopback(host)):
            sys.exit(f"refusing to load {host!r}: only loopback addresses are allowed")
        self.host, self.port = host, url.port or 80
        self.lock = threading.Lock()
        self.sent = 0
        self.stats: dict[str, dict] = defaultdict(lambda: {"requests": 0, "inputs": 0, "statuses": defaultdict(int),
                                                            "latencies": []})
        self.failures: list[str] = []
        self.vectors_checked = 0
        self.max_diff = 0.0

    # -- HTTP -------------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 120.0):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json; charset=UTF-8"}
            if self.args.key:
                headers["Authorization"] = f"Bearer {self.args.key}"
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            try:
                return response.status, json.loads(data) if data else None
            except ValueError:
                return response.status, data.decode("utf-8", "replace")
        finally:
            conn.close()

    def embed(self, inputs: list[str], timeout: float = 120.0):
        return self.request("POST", "/v1/embeddings", json.dumps({"input": inputs, "model": "load"}).encode(), timeout)

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def record(self, cls: str, inputs: int, status, started: float) -> None:
        with self.lock:
            s = self.stats[cls]
            s["requests"] += 1
            s["inputs"] += inputs
            s["statuses"][str(status)] += 1
            s["latencies"].append((time.monotonic() - started) * 1e3)

    def fail(self, message: str) -> None:
        with self.lock:
            if len(self.failures) < 10:
                print("FAIL:", message[:400], file=sys.stderr)
            self.failures.append(message)

    def check_vector(self, cls: str, name: str, got, baseline) -> None:
        diff = max((abs(a - b) for a, b in zip(got, baseline)), default=float("inf"))
        if len(got) != len(baseline):
            diff = float("inf")
        with self.lock:
            self.vectors_checked += 1
            self.max_diff = max(self.max_diff, diff)
        if diff > 1e-6:
            self.fail(f"{cls}: {name} differs from its baseline by {diff}")

    # -- setup ------------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        images = sorted(p for p in (FIXTURES / "images").iterdir() if p.is_file())
        images += [FIXTURES / "hostile" / n for n in ODD_VALID]
        hostile = sorted(p for p in (FIXTURES / "hostile").iterdir()
                         if p.is_file() and p.name not in ODD_VALID and not p.name.startswith("base."))
        hostile += sorted((FIXTURES / "images" / "broken").iterdir())
        self.valid_images = [(p.name, data_uri(p)) for p in images]
        self.valid_texts = [(t, t) for t in TEXTS]
        self.hostile = [(p.name, data_uri(p)) for p in hostile]
        self.baseline = {}
        for name, value in self.valid_images + self.valid_texts:
            status, body = self.embed([value])
            if status != 200:
                sys.exit(f"baseline for {name}: {status} {str(body)[:300]}")
            self.baseline[value] = body["data"][0]["embedding"]

    # -- one request ------------------------------------------------------------------------------------------
    def one(self, cls: str, rng: random.Random) -> None:
        started = time.monotonic()
        if cls in ("valid-image", "valid-text", "valid-mixed"):
            picked = []
            for _ in range(1 + rng.randrange(4)):
                images = cls == "valid-image" or (cls == "valid-mixed" and rng.randrange(2) == 0)
                picked.append(rng.choice(self.valid_images if images else self.valid_texts))
            status, body = self.embed([v for _, v in picked])
            self.record(cls, len(picked), status, started)
            if status != 200:
                return self.fail(f"{cls}: {status} {str(body)[:300]}")
            for i, (name, value) in enumerate(picked):
                self.check_vector(cls, name, body["data"][i]["embedding"], self.baseline[value])
        elif cls in ("hostile-image", "hostile-mixed"):
            bad_name, bad = rng.choice(self.hostile)
            inputs = []
            if cls == "hostile-mixed":
                for _ in range(1 + rng.randrange(3)):
                    inputs += [rng.choice(self.valid_texts)[1], rng.choice(self.valid_images)[1]]
            at = rng.randrange(len(inputs) + 1)
            inputs.insert(at, bad)
            status, body = self.embed(inputs)
            self.record(cls, len(inputs), status, started)
            message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
            if status != 400 or not message.startswith(f"input[{at}]: "):
                self.fail(f"{cls} {bad_name} at {at}: {status} {message[:200]}")
        elif cls == "hostile-body":
            what, payload, needle = rng.choice([
                ("invalid JSON", b'{"input":["a"', "invalid JSON"),
                ("invalid UTF-8", b'{"input":["caf\xc3\x28"]}', "invalid JSON"),
                ("nested 100 000 deep", ('{"input":' + "[" * 100_000 + '"a"' + "]" * 100_000 + "}").encode(),
                 "invalid JSON"),
                ("too many inputs", json.dumps({"input": ["a"] * (self.args.max_inputs + 1)}).encode(), "--max-inputs"),
                ("body over --max-body",
                 ('{"input":["a"],"pad":"' + " " * self.args.max_body + '"}').encode(), "--max-body"),
            ])
            try:
                status, body = self.request("POST", "/v1/embeddings", payload)
            except (BrokenPipeError, ConnectionResetError) as e:
                # The server stopped reading and closed: the client never sees the 400 (F6).
                self.record(cls, 0, "reset", started)
                return self.fail(f"{cls} {what}: connection reset before the answer (F6): {e}")
            self.record(cls, 0, status, started)
            message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
            if status != 400 or needle not in message:
                self.fail(f"{cls} {what}: {status} {message[:200]}")
        elif cls == "huge-valid":
            name, text = self.valid_texts[0]
            if rng.randrange(2) == 0:
                what = "huge JSON"
                pad = " " * (self.args.max_body - 4096)
                payload = ('{"input":[' + json.dumps(text) + '],"pad":"' + pad + '"}').encode()
            else:
                what = "1.5 MiB text"
                payload = json.dumps({"input": [text + " " + "snow falls on the hills " * (1 << 16)]}).encode()
            status, body = self.request("POST", "/v1/embeddings", payload)
            self.record(cls, 1, status, started)
            if status != 200:
                return self.fail(f"{cls} {what}: {status} {str(body)[:300]}")
            if what == "huge JSON":
                self.check_vector(cls, what, body["data"][0]["embedding"], self.baseline[text])
        elif cls == "abandoned":
            # The client hangs up after 0-20 ms: the server must drop the work, not crash.
            inputs = [rng.choice(self.valid_images)[1], rng.choice(self.valid_texts)[1]]
            try:
                status, body = self.embed(inputs, timeout=rng.randrange(21) / 1000 or 0.001)
            except (TimeoutError, socket.timeout):
                return self.record(cls, 2, "abandoned", started)
            self.record(cls, 2, status, started)
            if status != 200:
                self.fail(f"{cls}: {status} {str(body)[:300]}")
        else:
            path = rng.choice(["/health", "/ready", "/metrics", "/info"])
            status, _ = self.request("GET", path)
            self.record(cls, 0, status, started)
            if status != 200:
                self.fail(f"ops {path}: {status}")

    def client(self, seed: int, until: float) -> None:
        rng = random.Random(seed)
        names = [c for c, _ in CLASSES]
        weights = [w for _, w in CLASSES]
        while time.monotonic() < until:
            with self.lock:
                if self.sent >= self.args.max_requests:
                    return
                self.sent += 1
            cls = rng.choices(names, weights)[0]
            try:
                self.one(cls, rng)
            except Exception as e:  # transport errors: the server must never cause one
                self.fail(f"{cls}: transport error: {type(e).__name__}: {e}")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--key")
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--duration", type=float, default=180.0, help="seconds")
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--max-body", type=int, default=8 << 20, help="the server's --max-body")
    ap.add_argument("--max-inputs", type=int, default=2048, help="the server's --max-inputs")
    ap.add_argument("--server-pid", type=int)
    ap.add_argument("--report", type=Path)
    ap.add_argument("--seed", type=int, default=6)
    args = ap.parse_args()

    load = Load(args)
    load.prepare()
    pid = args.server_pid
    before = memory(pid) if pid else None
    print(f"load: {len(load.valid_images)} valid images, {len(load.valid_texts)} texts, {len(load.hostile)} hostile "
          f"inputs; {args.clients} clients for {args.duration:.0f} s", file=sys.stderr)
    started = time.monotonic()
    until = started + args.duration
    peak = [0]

    def sample() -> None:
        while time.monotonic() < until:
            m = memory(pid)
            if m:
                peak[0] = max(peak[0], m[0])
            time.sleep(1)

    threads = [threading.Thread(target=load.client, args=(args.seed * 1000 + i, until)) for i in range(args.clients)]
    if pid:
        threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started

    try:
        ready = load.request("GET", "/ready")[0]
    except Exception as e:
        ready = f"{type(e).__name__}: {e}"
    if ready != 200:
        load.fail(f"/ready after the load: {ready}")
    after = memory(pid) if pid else None

    def pct(xs, p):
        return xs[round((len(xs) - 1) * p)] if xs else 0.0

    report = {"seconds": round(elapsed, 1), "clients": args.clients,
              "requests": sum(s["requests"] for s in load.stats.values()),
              "inputs": sum(s["inputs"] for s in load.stats.values()),
              "vectors_checked": load.vectors_checked, "max_vector_diff": load.max_diff,
              "failures": len(load.failures), "first_failures": load.failures[:10], "ready_after": ready,
              "classes": {}}
    print(f"{'class':<14} {'requests':>8} {'inputs':>7}  {'statuses':<30} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for cls, _ in CLASSES:
        s = load.stats.get(cls)
        if not s:
            continue
        lat = sorted(s["latencies"])
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(s["statuses"].items()))
        p50, p99, mx = pct(lat, 0.5), pct(lat, 0.99), (lat[-1] if lat else 0.0)
        print(f"{cls:<14} {s['requests']:>8} {s['inputs']:>7}  {statuses:<30} {p50:>8.1f} {p99:>8.1f} {mx:>8.1f}")
        report["classes"][cls] = {"requests": s["requests"], "inputs": s["inputs"], "statuses": dict(s["statuses"]),
                                  "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "max_ms": round(mx, 1)}
    if before and after:
        report["server_memory_kib"] = {"rss_before": before[0], "rss_after": after[0], "rss_peak_sampled": peak[0],
                                       "vm_hwm": after[1]}
        print(f"server RSS: {before[0] >> 10} MiB before, {after[0] >> 10} MiB after, "
              f"peak sampled {peak[0] >> 10} MiB, VmHWM {after[1] >> 10} MiB")
    print(f"{report['requests']} requests ({report['inputs']} inputs) in {elapsed:.0f} s; "
          f"{load.vectors_checked} vectors checked against their baselines (max diff {load.max_diff:.1e}); "
          f"{len(load.failures)} failures")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))
    sys.exit(1 if load.failures else 0)


if __name__ == "__main__":
    main()
