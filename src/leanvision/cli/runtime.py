"""The runtime verbs: export, bench, serve."""

from __future__ import annotations

from .command import Opt, find, out_console, verb

verb("export", "runtime.stage:export",
     "Export ARTIFACT to ONNX (dynamic batch), checked against PyTorch before it is kept.",
     {"artifact": Opt("Artifact folder to export.", argument=True),
      "format": Opt("onnx.", flag="--format"),
      "out": "Copy the artifact here and export into the copy (default: export into ARTIFACT).",
      "batch": "Batch size of the parity check beside batch 1.",
      "opset": "ONNX opset (default: the exporter's)."},
     context=(),
     show=lambda r: out_console.print(f"{r['file']} (opset {r['opset']}, max difference to "
                                      f"PyTorch {r['max_abs_error']:.2g})"))

verb("bench", "runtime.bench:bench",
     "Latency (batch 1: p50/p90/p99), throughput (batch N), accuracy, size and FLOPs of every "
     "runtime and precision of each artifact.",
     {"artifacts": Opt("Artifact folders to measure.", argument=True),
      "data": "Also measure top-1 on this data (its val split, else test).",
      "runtimes": Opt("Comma-separated: torch, torch-compile, onnx-fp32, onnx-int8, "
                      "openvino-fp32, openvino-int8 (default: all but torch-compile).", type=str),
      "batch": "Batch size of the throughput run.",
      "threads": "Threads per run (default: physical cores).",
      "warmup": "Untimed runs before timing.", "iterations": "Timed runs per measurement.",
      "split": "auto, val or test (with --data).",
      "out": "Folder for bench.json (default: runs/bench/<time>)."},
     call=lambda runtimes=None, **kw: find("runtime.bench:bench")(runtimes=[
         r.strip() for r in runtimes.split(",") if r.strip()] if runtimes else None, **kw),
     show=lambda r: out_console.print(f"results: {r['path']}"))

verb("serve", "serving:serve",
     "An HTTP service and a web page for ARTIFACT (FastAPI on uvicorn, dynamic batching).",
     {"artifact": Opt("Artifact folder to serve (the only model the service ever loads).",
                      argument=True),
      "host": "Address to bind; anything but loopback needs an API key.", "port": None,
      "api_key": None, "runtime": "auto (the card's recommendation), onnx-int8, onnx-fp32 or "
                                  "torch.",
      "threads": "Inference threads (default: physical cores).", "max_batch": None,
      "max_wait_ms": None, "queue_size": None, "timeout_s": None, "max_body_mb": None,
      "top_k": None, "explain": "Serve /v1/explain (Grad-CAM) too.",
      "log_level": None,
      "spin": "Let ONNX Runtime's threads spin-wait between batches (off: the cores parse and "
              "decode requests meanwhile; bench/serve_load.py --spin off,on measures both)."},
     configs=("serving.app:ServeSettings",), context=(), as_json=False)
