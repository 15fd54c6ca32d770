"""`leanvision serve` under the attacks of issue 26, on loopback, against its targets:

- idle and slow sockets: --sockets connections (half silent, half dripping an unfinished request
  head one byte a second, each reopened as soon as the server drops it) held for --hold-s, while
  /healthz is timed every 100 ms from a process of its own (target: 200 within 100 ms
  throughout) and a prediction is sent every 200 ms (target: all succeed);
- decode-heavy small files: two requests of 40 6300x6300 1-bit PNGs (5 KB each; the issue's
  attack), then the best the caps still allow (16 MP files, 4 per request, 4 requests at a time)
  for --attack-s, with ordinary predictions alongside (target: p99 under 1 s, no 504) and the
  server's RSS before and after (target: back within 50 MB);
- a burst of 10 x --queue-size concurrent predictions of 4 images each (target: every answer 200,
  or 503 with Retry-After, from the app: zero resets, each counted in /metrics).

The attackers and probes run in this process (asyncio), so on a small machine they compete with
the server for the cores; latencies include that. Writes bench/results/serve_attacks.json."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import REPO, begin, console, print_table, result_record, write_result
from PIL import Image
from serve_load import free_port, stop_server, wait_ready

sys.path.insert(0, str(REPO / "tests"))
from test_serve_decoding import one_bit_png  # noqa: E402 - the tests' own bomb maker

HOST = "127.0.0.1"


def main() -> None:
    args = parse_args()
    run = begin()
    port = free_port()
    server = start_server(args, port)
    base = f"http://{HOST}:{port}"
    try:
        wait_ready(server, port)
        figures = {"sockets": asyncio.run(hold_sockets(base, port, args)),
                   "decode": asyncio.run(decode_attack(base, server.pid, args)),
                   "burst": asyncio.run(burst(base, args))}
    finally:
        stop_server(server)
    show(figures)
    write_result(args.name, result_record("serve_attacks", figures, vars(args), run))


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    code = ("from leanvision.serving import serve; "
            f"serve({str(Path(args.artifact).resolve())!r}, host={HOST!r}, port={port}, "
            f"queue_size={args.queue_size}, max_batch={min(32, args.queue_size)}, "
            f"threads={args.threads}, explain=False, log_level='error')")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def small_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def form(*items: tuple[str, bytes]) -> list:
    return [("file", (name, data, "application/octet-stream")) for name, data in items]


def summary(latencies: list[float]) -> dict[str, Any]:
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"count": len(latencies), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


# --- idle and slow sockets ---------------------------------------------------------------------

async def hold_one(port: int, slow: bool, until: float, counts: dict[str, int]) -> None:
    """Keep one socket open against the server until `until`, reopening it when dropped."""
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            counts["connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        counts["opened"] += 1
        try:
            if slow:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while time.monotonic() < until:
                if slow:
                    writer.write(b"a")
                    await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(1024), 1.0)
                except TimeoutError:
                    continue  # still held
                if not data:  # the server let go of it
                    counts["dropped_by_server"] += 1
                    break
        except OSError:
            counts["dropped_by_server"] += 1
        finally:
            writer.close()


# Timed from its own process: in this one its replies would wait behind the attackers' 1,000
# coroutines, and that lag is the client's, not the server's.
HEALTH_PROBE = """
import json, sys, time, httpx
base, seconds = sys.argv[1], float(sys.argv[2])
out, end = [], time.monotonic() + seconds
with httpx.Client(timeout=10) as client:
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            ok = client.get(base + "/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append([time.perf_counter() - started, ok])
        time.sleep(0.1)
print(json.dumps(out))
"""


async def hold_sockets(base: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    console.print(f"holding {args.sockets} idle/slow sockets for {args.hold_s:g} s ...")
    until = time.monotonic() + args.hold_s
    counts = dict.fromkeys(("opened", "dropped_by_server", "connect_failed"), 0)
    holders = [asyncio.create_task(hold_one(port, i % 2 == 1, until, counts))
               for i in range(args.sockets)]
    await asyncio.sleep(2)  # let them connect
    probe = subprocess.Popen([sys.executable, "-c", HEALTH_PROBE, base,
                              str(max(args.hold_s - 3, 1))], stdout=subprocess.PIPE, text=True)
    preds, pred_bad = [], 0
    image = form(("a.png", small_png(0)))
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                ok = (await client.post(f"{base}/v1/predict", files=image)).status_code == 200
            except httpx.HTTPError:
                ok = False
            preds.append(time.perf_counter() - started)
            pred_bad += not ok
            await asyncio.sleep(0.2)
    await asyncio.wait_for(asyncio.gather(*holders), 30)
    probed = json.loads(probe.communicate(timeout=60)[0])
    health = [seconds for seconds, _ in probed]
    health_bad = sum(not ok for _, ok in probed)
    within = sum(1 for s in health if s <= 0.1)
    return {"sockets": args.sockets, "hold_s": args.hold_s, **counts,
            "healthz": {**summary(health), "not_200": health_bad,
                        "within_100ms": f"{within}/{len(health)}"},
            "predict": {**summary(preds), "failed": pred_bad},
            "met": health_bad == 0 and within == len(health) and pred_bad == 0}


# --- decode-heavy small files ------------------------------------------------------------------

def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


async def attacker(client: httpx.AsyncClient, base: str, body: list, until: float,
                   statuses: list[int]) -> None:
    while time.monotonic() < until:
        try:
            statuses.append((await client.post(f"{base}/v1/predict", files=body)).status_code)
        except httpx.HTTPError:
            statuses.append(0)


async def decode_attack(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    console.print(f"decode-heavy attack for {args.attack_s:g} s ...")
    rss_start = rss_mb(pid)
    issue_bomb, at_cap = one_bit_png(6300), one_bit_png(4000)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        first = await asyncio.gather(*(client.post(f"{base}/v1/predict", files=form(
            *[(f"{i}.png", issue_bomb) for i in range(40)])) for _ in range(2)))
        until = time.monotonic() + args.attack_s
        statuses: list[int] = []
        attackers = [asyncio.create_task(attacker(client, base, form(
            *[(f"{i}.png", at_cap) for i in range(4)]), until, statuses)) for _ in range(4)]
        normal, codes = [], []
        image = form(("a.png", small_png(1)))
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                codes.append((await client.post(f"{base}/v1/predict", files=image)).status_code)
            except httpx.HTTPError:
                codes.append(0)
            normal.append(time.perf_counter() - started)
            await asyncio.sleep(0.1)
        await asyncio.wait_for(asyncio.gather(*attackers), 120)
    await asyncio.sleep(2)
    rss_end = rss_mb(pid)
    stats = summary(normal)
    return {"issue_attack": [r.status_code for r in first],
            "issue_attack_detail": first[0].json().get("detail", "")[:160],
            "attack_requests": len(statuses),
            "attack_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "normal": {**stats, "statuses": {str(s): codes.count(s) for s in sorted(set(codes))},
                       "timeouts_504": codes.count(504)},
            "rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                       "rise": round(rss_end - rss_start, 1)},
            "met": stats["p99_ms"] < 1000 and codes.count(504) == 0
            and rss_end - rss_start < 50}


# --- a burst above the queue -------------------------------------------------------------------

def metric_counts(text: str) -> dict[str, float]:
    counts = {}
    for line in text.splitlines():
        if line.startswith('leanvision_requests_total{endpoint="/v1/predict"'):
            status = line.split('status="')[1].split('"')[0]
            counts[status] = float(line.split()[-1])
    return counts


async def burst(base: str, args: argparse.Namespace) -> dict[str, Any]:
    count = 10 * args.queue_size
    console.print(f"burst of {count} requests ...")
    body = form(*[(f"{i}.png", small_png(i)) for i in range(4)])
    limits = httpx.Limits(max_connections=count + 8)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        before = metric_counts((await client.get(f"{base}/metrics")).text)

        async def one() -> str:
            try:
                answer = await client.post(f"{base}/v1/predict", files=body)
            except httpx.HTTPError as exc:
                return f"reset ({type(exc).__name__})"
            if answer.status_code == 503 and not answer.headers.get("retry-after"):
                return "503 without Retry-After"
            return str(answer.status_code)

        outcomes = await asyncio.gather(*(one() for _ in range(count)))
        after = metric_counts((await client.get(f"{base}/metrics")).text)
    answered = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    counted = {s: after.get(s, 0) - before.get(s, 0) for s in sorted(after)
               if after.get(s, 0) != before.get(s, 0)}
    return {"requests": count, "answers": answered, "metrics_counted": counted,
            "met": set(answered) <= {"200", "503"}
            and all(counted.get(s) == n for s, n in answered.items())}


def show(figures: dict[str, Any]) -> None:
    s, d, b = figures["sockets"], figures["decode"], figures["burst"]
    print_table("serve under attack (issue 26)", ["attack", "figures", "target met"], [
        [f"{s['sockets']} idle/slow sockets, {s['hold_s']:g} s",
         f"healthz p99 {s['healthz']['p99_ms']} ms, max {s['healthz']['max_ms']} ms, "
         f"{s['healthz']['within_100ms']} within 100 ms; predictions failed "
         f"{s['predict']['failed']}/{s['predict']['count']}", s["met"]],
        ["decode-heavy files",
         f"issue's attack {d['issue_attack']}; normal p99 {d['normal']['p99_ms']} ms, "
         f"504s {d['normal']['timeouts_504']}; RSS {d['rss_mb']['start']} -> "
         f"{d['rss_mb']['end']} MB", d["met"]],
        [f"burst of {b['requests']}", f"answers {b['answers']}; /metrics {b['metrics_counted']}",
         b["met"]]])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="artifact folder to serve")
    p.add_argument("--sockets", type=int, default=1000)
    p.add_argument("--hold-s", type=float, default=30.0)
    p.add_argument("--attack-s", type=float, default=15.0)
    p.add_argument("--queue-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--name", default="serve_attacks", help="results file name")
    return p.parse_args()


if __name__ == "__main__":
    main()
