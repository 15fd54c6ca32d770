"""OpenVINO's CPU plugin as an optional runtime: compiling the parity-checked model.onnx
("openvino-fp32") or the OpenVINO IR pair that `leanvision quantize --backend openvino` writes
("openvino-int8"), checking FP32 OpenVINO against PyTorch, and saving IR files atomically.

openvino is an optional dependency: nothing here imports it at module level, and every entry
point that needs it raises one ConfigError naming the extra to install.

Compiled with (bench/results/runtime_openvino.json has the figures that chose them):
- INFERENCE_NUM_THREADS = the caller's threads (the Predictor's `threads`), so runtimes compared
  side by side use the same cores;
- PERFORMANCE_HINT = LATENCY: one stream using every thread for one request, which is how a
  synchronous caller uses it. It is the CPU plugin's default in 2026.4 (no hint compiles the
  same, 1 stream), set so that a changed default cannot split the threads; THROUGHPUT was about
  2x slower at batch 1 and 32 (streams only pay with several requests in flight);
- INFERENCE_PRECISION_HINT = f32: on CPUs with bf16 (AVX-512 BF16, AMX) the plugin's default
  computes "FP32" models in bf16, a different precision from the one the file and its parity
  check promise."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError, ConfigError, ModelError

OPENVINO_RUNTIMES = ("openvino-fp32", "openvino-int8")
INT8_XML, INT8_BIN = "model.openvino-int8.xml", "model.openvino-int8.bin"
INSTALL_HINT = 'pip install "leanvision[openvino]"'
REQUANTIZE_HINT = "re-create it with `leanvision quantize --backend openvino`"

Runner = Callable[[np.ndarray], np.ndarray]


def require_openvino(what: str = "an OpenVINO runtime") -> Any:
    """The openvino module, or one ConfigError saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ConfigError(f"{what} needs OpenVINO, which is not installed; "
                          f"{INSTALL_HINT}") from None
    return openvino


def require_nncf(what: str = "--backend openvino") -> Any:
    """The nncf module (OpenVINO's quantiser), or one ConfigError saying how to install it."""
    require_openvino(what)
    try:
        import nncf
    except ImportError:
        raise ConfigError(f"{what} needs NNCF, which is not installed; {INSTALL_HINT}") from None
    return nncf


def openvino_available() -> bool:
    try:
        require_openvino()
    except ConfigError:
        return False
    return True


def compile_config(threads: int) -> dict[str, Any]:
    """The CPU plugin settings every leanvision OpenVINO model is compiled with (see above)."""
    return {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32"}


def read_model(path: str | os.PathLike) -> Any:
    """An ov.Model of an ONNX file or an IR .xml (whose .bin must lie beside it)."""
    ov = require_openvino()
    path = Path(path)
    if path.suffix == ".xml":
        weights = path.with_suffix(".bin")
        for needed in (path, weights):
            if not needed.is_file():
                raise ArtifactError(f"{needed} does not exist; an OpenVINO IR model is an .xml "
                                    f"and a .bin file side by side: {REQUANTIZE_HINT}")
    elif not path.is_file():
        raise ArtifactError(f"{path} does not exist; export it with `leanvision export`")
    try:
        return ov.Core().read_model(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "no message"
        fix = REQUANTIZE_HINT if path.suffix == ".xml" else "re-export it with `leanvision export`"
        raise ArtifactError(f"OpenVINO cannot read {path} ({first}); {fix}") from None


def check_io(model: Any, path: Path, num_classes: int | None = None) -> None:
    """ArtifactError unless the model has one [batch, 3, H, W] input and one [batch, classes]
    output (classes matching the card), as every leanvision classifier file has."""
    fix = REQUANTIZE_HINT if path.suffix == ".xml" else "re-export it with `leanvision export`"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ArtifactError(f"{path} has {len(model.inputs)} inputs and {len(model.outputs)} "
                            f"outputs, not one image input and one logits output; {fix}")
    inp, out = model.inputs[0].get_partial_shape(), model.outputs[0].get_partial_shape()
    if inp.rank.is_dynamic or inp.rank.get_length() != 4 or \
            (inp[1].is_static and inp[1].get_length() != 3):
        raise ArtifactError(f"{path}: input shape {inp} is not [batch, 3, H, W]; {fix}")
    if out.rank.is_dynamic or out.rank.get_length() != 2:
        raise ArtifactError(f"{path}: output shape {out} is not [batch, classes]; {fix}")
    if num_classes is not None and out[1].is_static and out[1].get_length() != num_classes:
        raise ArtifactError(f"{path}: the model outputs {out[1].get_length()} classes but the "
                            f"card lists {num_classes}; the file belongs to another model: {fix}")


def compile_model(model_or_path: Any, threads: int,
                  overrides: dict[str, Any] | None = None) -> Any:
    """An ov.CompiledModel on the CPU with compile_config(threads); `overrides` replace
    settings (a value None leaves the plugin's default), for benchmarks that compare them."""
    ov = require_openvino()
    model = read_model(model_or_path) if isinstance(model_or_path, str | Path) else model_or_path
    config = {**compile_config(threads), **(overrides or {})}
    config = {k: v for k, v in config.items() if v is not None}
    return ov.Core().compile_model(model, "CPU", config)


def openvino_runner(path: Path, threads: int, device: str = "cpu",
                    num_classes: int | None = None) -> Runner:
    """A Predictor runner: normalised float32 [N, 3, H, W] in, logits [N, C] out."""
    require_openvino(f"--runtime {'openvino-int8' if path.suffix == '.xml' else 'openvino-fp32'}")
    if device != "cpu":
        raise ConfigError(f"--device {device}: leanvision runs OpenVINO on the CPU only; use "
                          "--device cpu or an ONNX / torch runtime")
    model = read_model(path)
    check_io(model, path, num_classes)
    return model_runner(model, threads)


def model_runner(model: Any, threads: int, overrides: dict[str, Any] | None = None) -> Runner:
    """openvino_runner of an ov.Model in memory; `run.compiled` is its ov.CompiledModel."""
    compiled = compile_model(model, threads, overrides)
    # An infer request holds its input and output buffers, so it serves one thread at a time;
    # each calling thread (a server's workers) gets its own.
    local = threading.local()

    def run(x: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()  # the buffer is reused by the next call

    run.compiled = compiled  # type: ignore[attr-defined]  # its properties, for whoever asks
    return run


def check_parity(model: torch.nn.Module, onnx_path: Path, input_size: tuple[int, int], *,
                 batch: int = 8, threads: int | None = None, rtol: float = 1e-3,
                 atol: float = 1e-5) -> float:
    """Max abs logit difference of FP32 OpenVINO (compiling `onnx_path`) against PyTorch at
    batch 1 and `batch`, on seeded random images; ModelError when they disagree beyond
    rtol / atol (the tolerances of the ONNX export's own check)."""
    run = openvino_runner(Path(onnx_path), threads or torch.get_num_threads())
    generator = torch.Generator().manual_seed(0)
    was_training = model.training
    model = model.float().eval()
    worst = 0.0
    try:
        for n in sorted({1, batch}):
            x = torch.randn(n, 3, *input_size, generator=generator)
            with torch.no_grad():
                expected = model(x).float().numpy()
            got = run(x.numpy())
            if got.shape != expected.shape:
                raise ModelError(f"OpenVINO returned shape {got.shape} at batch {n} for "
                                 f"{onnx_path}, PyTorch {expected.shape}; report it with the "
                                 "model")
            worst = max(worst, float(np.max(np.abs(got - expected))) if got.size else 0.0)
            if not np.allclose(got, expected, rtol=rtol, atol=atol):
                raise ModelError(f"OpenVINO FP32 disagrees with PyTorch on {onnx_path} at batch "
                                 f"{n}: max abs logit difference {worst:.3g} (rtol {rtol:g}, "
                                 f"atol {atol:g}); use the onnx-fp32 runtime and report the "
                                 "model")
    finally:
        model.train(was_training)
    return worst


def save_ir(model: Any, xml_path: Path) -> list[Path]:
    """Write `model` as OpenVINO IR (xml + bin) at `xml_path`, each file renamed into place: the
    .bin first, so a present .xml never points at a half-written or older .bin."""
    ov = require_openvino()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".openvino-", dir=xml_path.parent))
    try:
        # FP16 weight compression is off: the INT8 weights are int8 already and the remaining
        # FP32 ones (biases, layers the guard returned to FP32) are to stay what was measured.
        ov.save_model(model, str(scratch / xml_path.name), compress_to_fp16=False)
        bin_path = xml_path.with_suffix(".bin")
        os.replace(scratch / bin_path.name, bin_path)
        os.replace(scratch / xml_path.name, xml_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [xml_path, bin_path]


def median_latency_ms(path: Path, input_size: tuple[int, int], batch: int, *, threads: int,
                      runs: int = 30, warmup: int = 5) -> float:
    """Median wall time (ms) of one call at `batch` (random inputs: the time of these graphs does
    not depend on the values), as ort_quant.median_latency_ms measures ONNX Runtime."""
    run = openvino_runner(Path(path), threads)
    x = np.random.default_rng(0).normal(size=(batch, 3, *input_size)).astype(np.float32)
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def quantized_ops(model: Any) -> dict[str, str]:
    """{op name: op type} of the ops that read a FakeQuantize output (what runs in INT8)."""
    found = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("FakeQuantize", "Constant", "Parameter", "Result", "Convert"):
            continue
        sources = [value.get_node().get_type_name() for value in op.input_values()]
        if "FakeQuantize" in sources:
            found[op.get_friendly_name()] = op.get_type_name()
    return found


def int8_layers(compiled: Any) -> dict[str, int]:
    """{layer type: count} of the layers the CPU plugin really executes in 8-bit (its runtime
    graph's runtimePrecision u8 / i8), constants and layout-only layers left out: a file full of
    FakeQuantize ops proves nothing if the plugin decompresses them and runs FP32 kernels."""
    skipped = ("Const", "Input", "Output", "Reorder", "Reshape", "Transpose")
    found: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind not in skipped and info["runtimePrecision"].astype(str) in ("u8", "i8"):
            found[kind] = found.get(kind, 0) + 1
    return found
