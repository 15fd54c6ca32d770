"""`leanvision serve` under load (issue 7's target): 1, 8 and 32 concurrent clients on loopback,
each sending one image per request as fast as answers come back, against the runtime's own
batch throughput for the same model measured in the same run.

- the server is `leanvision.serving.serve` in a subprocess (its own interpreter, as in use),
  bound to 127.0.0.1 with --max-batch / --max-wait-ms / --threads as given; `--spin off,on`
  starts two servers, ONNX Runtime's worker threads sleeping between batches (serve's default)
  and spin-waiting (ORT's own default);
- the baseline is `Predictor.run_normalised` at batch --max-batch in this process (the network
  call alone, as `leanvision bench` times it);
- per client level, the baseline and every server are timed in --repeats interleaved rounds
  (bench/protocol.py), each server repeat bounded by --requests requests or --seconds seconds,
  whichever comes first, after a short warm-up; figures: requests/s, p50 / p99 latency (median,
  min, max of the repeats, every repeat kept), errors, and requests/s as a share of the
  baseline's images/s, paired round by round (target: median >= 70% at 32 clients with zero
  errors).

The clients are bare HTTP/1.1 keep-alive connections (asyncio) in this process, so on a small
machine they compete with the server for the cores; cpu_share_of_others records what else ran
and server_cpu_ms_per_request what one request costs the server. Images: the first CIFAR-10
test JPEGs (--images cifar10, the default) or random PNGs at the model's input size
(--images synthetic, no data needed). Writes bench/results/serve_load.json."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import (
    REPO,
    CpuShare,
    begin,
    cifar10,
    console,
    die,
    interleave,
    print_table,
    ratio,
    result_record,
    spread,
    write_result,
)
from PIL import Image

from leanvision.runtime.bench import throughput
from leanvision.runtime.predictor import Predictor

HOST = "127.0.0.1"  # loopback only: a load generator must never point at someone else
READY_TIMEOUT_S = 120
WARMUP_REQUESTS = 20
TARGET_SHARE = 0.7


def main() -> None:
    args = parse_args()
    run = begin()
    if args.images == "synthetic":
        run.caveat("synthetic images (random PNGs at the model's input size)")
    predictor = Predictor.from_artifact(args.artifact, runtime=args.runtime,
                                        threads=args.threads)
    images = load_images(args.images, predictor.input_size, args.image_count)
    spins = [v.strip() for v in args.spin.split(",")]
    for spin in spins:
        if spin not in ("on", "off"):
            die(f"--spin {spin!r}: each value must be on or off")
    variants = run_levels(args, images, predictor, spins)
    # The server's default (spinning off) carries the target when it was run.
    main_levels = variants.get("spin-off") or next(iter(variants.values()))
    baseline = main_levels[next(c for c in main_levels if c.isdigit())]["runtime_images_per_s"]
    figures = {"runtime": predictor.runtime, "runtime_images_per_s": baseline,
               "repeats": args.repeats, "levels": main_levels, "target": target(main_levels),
               "variants": {name: {"share_at_32": levels.get("32", {}).get("share_of_runtime"),
                                   "levels": levels} for name, levels in variants.items()}}
    print_table(f"serve under load ({predictor.runtime}, batch {args.max_batch}, "
                f"{args.threads} threads; median (min-max) of {args.repeats} interleaved "
                "repeats; the runtime alone timed in the same rounds)",
                ["server", "clients", "req/s", "p50 ms", "p99 ms", "errors",
                 "share of runtime"],
                [[name, c, _span(v["requests_per_s"]), v["p50_ms"]["median"],
                  v["p99_ms"]["median"], v["errors"], _span(v["share_of_runtime"])]
                 for name, levels in variants.items()
                 for c, v in levels.items() if c.isdigit()], run=run)
    write_result(args.name, result_record("serve_load", figures, vars(args), run))


def _span(entry: dict[str, Any]) -> str:
    return f"{entry['median']:.3g} ({entry['min']:.3g}-{entry['max']:.3g})"


def run_levels(args: argparse.Namespace, images: list[bytes], predictor: Predictor,
               spins: list[str]) -> dict[str, dict[str, Any]]:
    """Every server variant up at once; per client level, the runtime alone and each server
    timed in the same interleaved rounds (protocol.interleave)."""
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for spin in spins:
            port = free_port()
            servers[f"spin-{spin}"] = (start_server(args, port, spin == "on"), port)
        for server, port in servers.values():
            wait_ready(server, port)
        variants: dict[str, dict[str, Any]] = {name: {} for name in servers}
        for clients in [int(c) for c in args.clients.split(",")]:
            for name, level in measure_level(args, images, predictor, servers,
                                             clients).items():
                variants[name][str(clients)] = level
                console.print(f"{name} {clients:>3} clients: "
                              f"{_span(level['requests_per_s'])} req/s, "
                              f"p50 {level['p50_ms']['median']:.1f} ms, "
                              f"{level['errors']} errors")
        for name, (_, port) in servers.items():
            variants[name]["server_metrics"] = batch_sizes(port)
    finally:
        for server, _ in servers.values():
            stop_server(server)
    return variants


def measure_level(args: argparse.Namespace, images: list[bytes], predictor: Predictor,
                  servers: dict[str, tuple[subprocess.Popen, int]],
                  clients: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}

    def load(name: str):
        server, port = servers[name]

        def one_repeat() -> float:
            with CpuShare() as share:
                cpu_before = process_cpu_seconds(server.pid)
                level = asyncio.run(load_level(port, images, clients, args.requests,
                                               args.seconds))
                server_cpu = process_cpu_seconds(server.pid) - cpu_before
            cores = os.cpu_count() or 1
            level["cpu_share_of_others"] = round(max(
                0.0, share.others - server_cpu / (level["seconds"] * cores)), 3)
            # What one request costs the server, all threads together: with the baseline's
            # cost per image it shows how much of the gap is HTTP and decoding overhead.
            level["server_cpu_ms_per_request"] = round(
                1000 * server_cpu / max(level["requests"], 1), 3)
            runs[name].append(level)
            return level["requests_per_s"]
        return one_repeat

    measures = {"runtime": lambda: runtime_throughput(predictor, args.max_batch)}
    measures.update({name: load(name) for name in servers})
    timed = interleave(measures, args.repeats)
    out = {}
    for name, repeats in runs.items():
        out[name] = {
            "clients": clients, "runtime_images_per_s": timed["runtime"],
            "requests_per_s": timed[name],
            "share_of_runtime": ratio(timed[name], timed["runtime"]),
            "p50_ms": spread([r["p50_ms"] for r in repeats]),
            "p99_ms": spread([r["p99_ms"] for r in repeats]),
            "errors": sum(r["errors"] for r in repeats),
            "first_error": next((r["first_error"] for r in repeats if r["first_error"]), None),
            "server_cpu_ms_per_request": spread([r["server_cpu_ms_per_request"]
                                                 for r in repeats]),
            "cpu_share_of_others": max(r["cpu_share_of_others"] for r in repeats),
            "repeats": repeats}
    return out


def runtime_throughput(predictor: Predictor, batch: int) -> float:
    h, w = predictor.input_size
    x = np.random.default_rng(0).standard_normal((batch, 3, h, w), dtype=np.float32)
    return throughput(predictor.run_normalised, x, warmup=5, iterations=30)


def load_images(source: str, size: tuple[int, int], count: int) -> list[bytes]:
    if source == "synthetic":
        rng = np.random.default_rng(0)
        out = []
        for _ in range(count):
            buffer = io.BytesIO()
            pixels = rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, format="PNG")
            out.append(buffer.getvalue())
        return out
    folder = cifar10() / "test" if source == "cifar10" else Path(source)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg",
                                                                          ".png"))
    if not files:
        die(f"no .jpg / .png images under {folder}; pass --images DIR or --images synthetic")
    # Every class, not only the first folder's: take files spread over the sorted list.
    step = max(1, len(files) // count)
    return [p.read_bytes() for p in files[::step][:count]]


def multipart_request(port: int, data: bytes) -> bytes:
    """One whole POST /v1/predict as bytes, built once per image and replayed."""
    boundary = b"leanvisionbenchboundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="i.jpg"\r\nContent-Type: application/octet-stream\r\n\r\n' + data
            + b"\r\n--" + boundary + b"--\r\n")
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary.decode()}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def post_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   request: bytes) -> tuple[int, bytes]:
    """Send a prepared request on a kept-alive connection; (status, body) of the answer.

    A bare HTTP/1.1 exchange instead of httpx: on a 2-core machine the load generator shares
    the cores with the server, and httpx spends about a millisecond of CPU per request."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(line.split(":", 1)[1]) for line in lines
                   if line.lower().startswith("content-length:")), 0)
    return status, await reader.readexactly(length)


async def load_level(port: int, images: list[bytes], clients: int, requests: int,
                     seconds: float) -> dict[str, Any]:
    """`clients` connections, each posting one image at a time, until `requests` are answered
    or `seconds` pass; latencies of the answered ones, errors = non-200 or broken connections."""
    prepared = [multipart_request(port, data) for data in images]
    latencies: list[float] = []
    errors: dict[str, Any] = {"count": 0, "first": None}
    issued = {"n": 0}

    async def one_client(deadline: float | None, limit: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while issued["n"] < limit and (deadline is None or time.perf_counter() < deadline):
                request = prepared[issued["n"] % len(prepared)]
                issued["n"] += 1
                t0 = time.perf_counter()
                try:
                    status, body = await post_raw(reader, writer, request)
                    problem = None if status == 200 else f"{status}: {body[:120]!r}"
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                if problem is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors["count"] += 1
                    errors["first"] = errors["first"] or problem
        finally:
            writer.close()

    await asyncio.gather(*(one_client(None, WARMUP_REQUESTS) for _ in range(clients)))
    latencies.clear()
    errors.update(count=0, first=None)
    issued["n"] = 0
    started = time.perf_counter()
    await asyncio.gather(*(one_client(started + seconds, requests) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": len(latencies) + errors["count"],
            "seconds": round(elapsed, 3),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "errors": errors["count"], "first_error": errors["first"]}


def target(levels: dict[str, Any]) -> dict[str, Any]:
    top = levels.get("32")
    if top is None:
        return {"met": None, "note": "32 clients were not run"}
    share = top["share_of_runtime"]
    return {"share_at_32": share["median"], "share_at_32_range": [share["min"], share["max"]],
            "errors_at_32": top["errors"], "goal": f">= {TARGET_SHARE:.0%} with zero errors "
            "(median of the repeats)",
            "met": share["median"] >= TARGET_SHARE and top["errors"] == 0}


def batch_sizes(port: int) -> dict[str, float]:
    text = httpx.get(f"http://{HOST}:{port}/metrics").text
    values = {}
    for line in text.splitlines():
        for key in ("leanvision_batch_size_sum", "leanvision_batch_size_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    count = values.get("leanvision_batch_size_count", 0)
    return {"batches": count, "mean_batch": round(values.get("leanvision_batch_size_sum", 0)
                                                 / count, 2) if count else None}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, spin: bool) -> subprocess.Popen:
    code = ("import sys; from leanvision.serving import serve; "
            f"serve({str(Path(args.artifact).resolve())!r}, host={HOST!r}, port={port}, "
            f"runtime={args.runtime!r}, max_batch={args.max_batch}, "
            f"max_wait_ms={args.max_wait_ms}, threads={args.threads}, explain=False, "
            f"log_level='warning', spin={spin})")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def wait_ready(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            die(f"the server exited with code {server.returncode} before it was ready")
        try:
            if httpx.get(f"http://{HOST}:{port}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    die(f"the server was not ready within {READY_TIMEOUT_S} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process and its threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="artifact folder to serve (export / quantize it first for "
                                    "ONNX Runtime)")
    p.add_argument("--runtime", default="auto")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels, comma-separated")
    p.add_argument("--requests", type=int, default=2000,
                   help="at most this many per level and repeat")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="at most this long per level and repeat")
    p.add_argument("--repeats", type=int, default=5,
                   help="interleaved rounds per level (the protocol's minimum is 5)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=2, help="runtime threads (server and "
                                                          "baseline alike)")
    p.add_argument("--images", default="cifar10",
                   help="cifar10 (test JPEGs), synthetic (random PNGs) or a folder")
    p.add_argument("--image-count", type=int, default=256)
    p.add_argument("--spin", default="off",
                   help="ONNX Runtime thread spinning in the server: off (serve's default), "
                        "on, or off,on to compare both in one run (both servers up, timed "
                        "in the same interleaved rounds)")
    p.add_argument("--name", default="serve_load", help="results file name")
    args = p.parse_args()
    if args.requests < 1 or args.seconds <= 0:
        die("--requests must be >= 1 and --seconds > 0")
    return args


if __name__ == "__main__":
    main()
