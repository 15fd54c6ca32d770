"""The runtime verbs: export, bench, serve."""

from __future__ import annotations

from .command import Opt, fields_of, find, out_console, verb

EXPORT, BENCH = "runtime.stage:ExportOptions", "runtime.bench:BenchOptions"
SERVE = "serving.api:ServeOptions"

verb("export", "runtime.stage:export",
     "Export ARTIFACT to ONNX (dynamic batch), checked against PyTorch before it is kept.",
     lambda: fields_of(EXPORT) | {"artifact": Opt(argument=True), "format": Opt(flag="--format")},
     configs=(EXPORT,), context=(),
     show=lambda r: out_console.print(f"{r['file']} (opset {r['opset']}, max difference to "
                                      f"PyTorch {r['max_abs_error']:.2g})"))

verb("bench", "runtime.bench:bench",
     "Latency (batch 1: p50/p90/p99), throughput (batch N), accuracy, size and FLOPs of every "
     "runtime and precision of each artifact.",
     lambda: fields_of(BENCH) | {"artifacts": Opt(argument=True),
                                     "runtimes": Opt(type=str)}, configs=(BENCH,),
     call=lambda runtimes=None, **kw: find("runtime.bench:bench")(runtimes=[
         r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None, **kw),
     show=lambda r: out_console.print(f"results: {r['path']}"))

verb("serve", "serving:serve",
     "An HTTP service and a web page for ARTIFACT (FastAPI on uvicorn, dynamic batching).",
     lambda: {"artifact": Opt("Artifact folder to serve (the only model the service ever "
                              "loads).", argument=True),
              **dict.fromkeys(("host", "port", "api_key", "runtime", "threads")),
              **fields_of(SERVE)},
     configs=(SERVE,), context=(), as_json=False)
