"""Checks on an ONNX file before any runtime opens it.

An ONNX file is a protobuf that may point at "external data" files by relative path; a crafted
file can name /etc/shadow or ../../secret and have a runtime read it. So the file is parsed
without its external data, every external location is checked to stay inside the model's
folder, and only then does onnx.checker (which does read external data) see it. The one input
must be [batch, 3, H, W] float and the one output [batch, classes]."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from ..errors import ArtifactError

DAMAGED_HINT = "the file is damaged; re-export it with `leanvision export`"


def check_onnx(path: str | os.PathLike, folder: str | os.PathLike | None = None, *,
               num_classes: int | None = None,
               input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Validate the ONNX file at `path` and return a summary of it.

    `folder` (default: the file's own folder) is where external data must stay. `num_classes`
    and `input_size`, when given (from the artifact's card), must match the graph's output and
    input. Returns {"path", "bytes", "opset", "input": {"name", "shape"}, "output": {"name",
    "shape"}, "external_data": [relative locations], "ops": {op_type: count}}. Raises one
    ArtifactError naming the problem otherwise; nothing is written."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist; export it with `leanvision export`")
    if not path.is_file():
        raise ArtifactError(f"{path} is not a file; pass an ONNX model file")
    size = path.stat().st_size
    if size == 0:
        raise ArtifactError(f"{path} is empty (0 bytes); {DAMAGED_HINT}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model ({_short(exc)}); "
                            f"{DAMAGED_HINT}") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ArtifactError(f"{path} holds no graph (truncated?); {DAMAGED_HINT}")
    root = Path(folder) if folder is not None else path.parent
    external = _check_external_data(model, path, root)
    try:
        # By path, so the checker also verifies external data files and large models.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, DecodeError, ValueError, RuntimeError,
            OSError) as exc:
        raise ArtifactError(f"{path} fails the ONNX checker ({_short(exc)}); "
                            f"{DAMAGED_HINT}") from None
    inputs = _graph_inputs(model.graph)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ArtifactError(f"{path} has {len(inputs)} inputs and {len(model.graph.output)} "
                            "outputs; a leanvision classifier has one image input and one "
                            "logits output. Re-export it with `leanvision export`")
    input_info = _value_info(inputs[0])
    output_info = _value_info(model.graph.output[0])
    _check_io(path, input_info, output_info, num_classes, input_size)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
                 None)
    return {"path": str(path), "bytes": size, "opset": opset, "input": input_info,
            "output": output_info, "external_data": external, "ops": ops}


def _short(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0][:200] if lines else type(exc).__name__)


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Initializers and tensor attributes, subgraphs (If / Loop bodies) included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _check_external_data(model: onnx.ModelProto, path: Path, root: Path) -> list[str]:
    locations: list[str] = []
    base = root.resolve()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        if not location:
            raise ArtifactError(f"{path}: tensor '{tensor.name}' is stored as external data "
                                f"without a location; {DAMAGED_HINT}")
        # Both spellings of absolute: a POSIX root and a Windows drive or UNC path.
        if Path(location).is_absolute() or location.startswith(("/", "\\")) \
                or (len(location) > 1 and location[1] == ":"):
            raise ArtifactError(f"{path}: tensor '{tensor.name}' points at external data by "
                                f"the absolute path '{location}'; refusing to read files "
                                f"outside {root}. Re-export the model with its data beside it")
        target = (path.parent / location).resolve()
        if not target.is_relative_to(base):
            raise ArtifactError(f"{path}: tensor '{tensor.name}' points at external data "
                                f"'{location}', which resolves outside {root}; refusing to "
                                "read it. Re-export the model with its data beside it")
        if not target.is_file():
            raise ArtifactError(f"{path}: the external data file '{location}' of tensor "
                                f"'{tensor.name}' is missing; copy it beside the model or "
                                "re-export with `leanvision export`")
        if location not in locations:
            locations.append(location)
    return locations


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    # Older exporters list initializers among the inputs too; those are weights, not inputs.
    weights = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in weights]


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape: list[int | str | None] | None = None
    if tensor.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tensor.shape.dim]
    return {"name": value.name, "shape": shape,
            "dtype": onnx.TensorProto.DataType.Name(tensor.elem_type)}


def _check_io(path: Path, inp: dict[str, Any], out: dict[str, Any], num_classes: int | None,
              input_size: tuple[int, int] | None) -> None:
    fix = "re-export the artifact's model with `leanvision export`"
    if inp["dtype"] != "FLOAT":
        raise ArtifactError(f"{path}: input '{inp['name']}' is {inp['dtype']}, not FLOAT "
                            f"(normalised images); {fix}")
    shape = inp["shape"]
    if shape is None or len(shape) != 4 or shape[1] not in (3, None):
        raise ArtifactError(f"{path}: input '{inp['name']}' has shape {shape}, not "
                            f"[batch, 3, H, W]; {fix}")
    if input_size is not None:
        want = [int(input_size[0]), int(input_size[1])]
        got = shape[2:]
        if any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
            raise ArtifactError(f"{path}: input is {got[0]}x{got[1]} px but the card says "
                                f"{want[0]}x{want[1]}; the file belongs to another model: {fix}")
    oshape = out["shape"]
    if oshape is None or len(oshape) != 2:
        raise ArtifactError(f"{path}: output '{out['name']}' has shape {oshape}, not "
                            f"[batch, classes]; {fix}")
    if num_classes is not None and isinstance(oshape[1], int) and oshape[1] != num_classes:
        raise ArtifactError(f"{path}: the model outputs {oshape[1]} classes but the card lists "
                            f"{num_classes}; the file belongs to another model: {fix}")
