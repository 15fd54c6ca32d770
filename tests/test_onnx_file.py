"""runtime/onnx_file.py on small hand-built graphs (no training, no torch export): the summary of
a good file, and each refusal (missing, empty, damaged, unsafe external data wherever a tensor
hides, wrong inputs and outputs, another model's file) with the message that names it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from leanvision.errors import ArtifactError
from leanvision.runtime.onnx_file import _short, check_onnx

FLOAT = TensorProto.FLOAT


def _model(classes: int = 4, size=(8, 8), *, dtype=FLOAT, channels=3, out_rank: int = 2,
           extra_input: bool = False, weights_as_input: bool = False) -> onnx.ModelProto:
    """image [N, channels, H, W] -> mean over H, W -> @ W [channels, classes] -> [N, classes]."""
    weight = numpy_helper.from_array(
        np.arange(channels * classes, dtype=np.float32).reshape(channels, classes), "W")
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"])]
    inputs = [helper.make_tensor_value_info("image", dtype, ["N", channels, *size])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("text", FLOAT, ["N", 5]))
    if weights_as_input:  # older exporters list initializers among the inputs
        inputs.append(helper.make_tensor_value_info("W", FLOAT, [channels, classes]))
    out_shape = ["N", classes] if out_rank == 2 else ["N", classes, 1][:out_rank]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("logits", FLOAT, out_shape)],
                              initializer=[axes, weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def test_a_good_file_is_summarised(tmp_path) -> None:
    path = _save(_model(), tmp_path / "m" / "model.onnx")
    summary = check_onnx(path, num_classes=4, input_size=(8, 8))
    assert summary == {"path": str(path), "bytes": path.stat().st_size, "opset": 18,
                       "input": {"name": "image", "shape": ["N", 3, 8, 8], "dtype": "FLOAT"},
                       "output": {"name": "logits", "shape": ["N", 4], "dtype": "FLOAT"},
                       "external_data": [], "ops": {"ReduceMean": 1, "MatMul": 1}}
    # weights listed among the inputs are not inputs; an unnamed batch axis reads as None
    model = _model(weights_as_input=True)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    summary = check_onnx(_save(model, tmp_path / "old" / "model.onnx"))
    assert summary["input"] == {"name": "image", "shape": [None, 3, 8, 8], "dtype": "FLOAT"}


def test_missing_empty_and_damaged_files(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="nothing.onnx does not exist; export it"):
        check_onnx(tmp_path / "nothing.onnx")
    with pytest.raises(ArtifactError, match="is not a file; pass an ONNX model file"):
        check_onnx(tmp_path)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"empty \(0 bytes\); the file is damaged"):
        check_onnx(empty)
    whole = _model().SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArtifactError, match=r"cut.onnx is not a readable ONNX model \(Error "
                                            r"parsing message.*\); the file is damaged"):
        check_onnx(cut)
    no_graph = tmp_path / "nograph.onnx"
    no_graph.write_bytes(helper.make_model(helper.make_graph([], "g", [], [])).SerializeToString())
    with pytest.raises(ArtifactError, match=r"holds no graph \(truncated\?\)"):
        check_onnx(no_graph)


def test_a_graph_the_checker_rejects_is_refused(tmp_path) -> None:
    model = _model()
    model.graph.node[1].input[1] = "undefined"
    with pytest.raises(ArtifactError, match=r"fails the ONNX checker \(.*undefined.*\); the "
                                            "file is damaged; re-export it with `leanvision "
                                            "export`"):
        check_onnx(_save(model, tmp_path / "model.onnx"))


@pytest.mark.parametrize(("change", "message"), [
    ({"extra_input": True}, "has 2 inputs and 1 outputs; a leanvision classifier has one "
                            "image input and one logits output. Re-export it with `leanvision "
                            "export`"),
    ({"dtype": TensorProto.UINT8}, r"model.onnx: input 'image' is UINT8, not FLOAT \(normalised "
                                   r"images\); re-export the artifact's model with `leanvision "
                                   "export`"),
    ({"channels": 1}, r"has shape \['N', 1, 8, 8\], not \[batch, 3, H, W\]"),
    ({"out_rank": 3}, r"output 'logits' has shape \['N', 4, 1\], not \[batch, classes\]"),
])
def test_inputs_and_outputs_must_be_an_image_classifier(tmp_path, change, message) -> None:
    model = _model(**change)  # the checker does not infer shapes: declared ones are read
    with pytest.raises(ArtifactError, match=message):
        check_onnx(_save(model, tmp_path / "model.onnx"))


def test_an_input_of_another_rank_is_refused(tmp_path) -> None:
    model = _model()
    del model.graph.input[0].type.tensor_type.shape.dim[3]
    with pytest.raises(ArtifactError, match=r"has shape \['N', 3, 8\], not"):
        check_onnx(_save(model, tmp_path / "model.onnx"))


def test_another_models_file_is_refused(tmp_path) -> None:
    path = _save(_model(classes=4, size=(8, 6)), tmp_path / "model.onnx")
    with pytest.raises(ArtifactError, match="outputs 4 classes but the card lists 10; the file "
                                            "belongs to another model"):
        check_onnx(path, num_classes=10)
    with pytest.raises(ArtifactError, match="model.onnx: input is 8x6 px but the card says 8x16"):
        check_onnx(path, input_size=(8, 16))
    with pytest.raises(ArtifactError, match="input is 8x6 px but the card says 16x6"):
        check_onnx(path, input_size=(16, 6))
    dynamic = _save(_model(size=("H", "W")), tmp_path / "dyn" / "model.onnx")
    assert check_onnx(dynamic, num_classes=4, input_size=(64, 48))["input"]["shape"] == [
        "N", 3, "H", "W"]


def _external(tmp_path: Path, location: str | None, model: onnx.ModelProto | None = None,
              threshold: int = 70) -> Path:
    """model.onnx in tmp_path/m whose weight W is external data at `location` (None: the
    location entry removed); `threshold` is onnx's, in sys.getsizeof bytes (W: 81, axes: 49)."""
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    model = model or _model()
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=threshold)
    saved = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in _tensors(saved.graph):
        for entry in list(tensor.external_data):
            if entry.key == "location" and location is None:
                tensor.external_data.remove(entry)
            elif entry.key == "location":
                entry.value = location
    onnx.save(saved, str(folder / "model.onnx"))
    return folder / "model.onnx"


def _tensors(graph):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def test_external_data_inside_the_folder_is_listed_once(tmp_path) -> None:
    path = _external(tmp_path, "weights.bin")
    assert check_onnx(path)["external_data"] == ["weights.bin"]
    (tmp_path / "m" / "weights.bin").rename(tmp_path / "m" / "w")  # a one-letter name
    assert check_onnx(_external(tmp_path, "w"))["external_data"] == ["w"]


def test_a_tensor_after_an_inline_one_is_checked_too(tmp_path) -> None:
    """Only W is external; the axes before it stay in the file."""
    path = _external(tmp_path, "../weights.bin")
    with pytest.raises(ArtifactError, match="tensor 'W' points at external data"):
        check_onnx(path)


@pytest.mark.parametrize(("location", "message"), [
    ("/etc/hostname", "by the absolute path '/etc/hostname'; refusing to read"),
    ("\\\\server\\share\\w.bin", "by the absolute path"),
    ("C:\\w.bin", "by the absolute path 'C:\\\\w.bin'"),
    ("C:", "by the absolute path 'C:'"),
    ("../weights.bin", "tensor 'W' points at external data '../weights.bin', which resolves "
                       "outside .*; refusing to read it. Re-export the model with its data "
                       "beside it"),
    ("sub/../../weights.bin", "which resolves outside"),
])
def test_external_data_outside_the_folder_is_refused(tmp_path, location, message) -> None:
    path = _external(tmp_path, location)
    (tmp_path / "weights.bin").write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    with pytest.raises(ArtifactError, match=message):
        check_onnx(path)


def test_external_data_missing_or_without_location(tmp_path) -> None:
    path = _external(tmp_path, "gone.bin")
    with pytest.raises(ArtifactError, match="external data file 'gone.bin' of tensor 'W' is "
                                            "missing; copy it beside the model or re-export "
                                            "with `leanvision export`"):
        check_onnx(path)
    for location in ("", None):
        path = _external(tmp_path, location)
        with pytest.raises(ArtifactError, match="tensor 'W' is stored as external data without "
                                                "a location; the file is damaged"):
            check_onnx(path)


def test_external_data_is_checked_against_the_artifact_folder_given(tmp_path) -> None:
    path = _external(tmp_path, "weights.bin")
    with pytest.raises(ArtifactError, match="resolves outside"):
        check_onnx(path, folder=tmp_path / "m" / "elsewhere")
    assert check_onnx(path, folder=tmp_path)["external_data"] == ["weights.bin"]


def _pointing(name: str, location: str, shape=(4,)) -> onnx.TensorProto:
    """A float tensor whose data is said to be in the file at `location`."""
    tensor = numpy_helper.from_array(np.zeros(shape, dtype=np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    return tensor


def test_external_data_in_a_node_attribute_is_checked(tmp_path) -> None:
    """A Constant node's tensor attribute can point at external data too (onnx.save leaves
    attributes inline, so the tensor is made by hand)."""
    model = _model()
    model.graph.initializer.pop()  # W, now a Constant node's attribute
    model.graph.node.insert(0, helper.make_node("Constant", [], ["W"],
                                                value=_pointing("W", "../w.bin", (3, 4))))
    with pytest.raises(ArtifactError, match="tensor 'W' points at external data '../w.bin', "
                                            "which resolves outside"):
        check_onnx(_save(model, tmp_path / "m" / "model.onnx"))


@pytest.mark.parametrize("where", ["g", "graphs"])
def test_external_data_in_a_subgraph_is_checked(tmp_path, where) -> None:
    """An If's branches (attribute g) or a list of graphs (attribute graphs) can hold tensors;
    the check runs before the ONNX checker, so the node need not be valid for the test."""
    outside = _pointing("c", "../../x.bin")
    branch = helper.make_graph([helper.make_node("Constant", [], ["c"], value=outside)], "b",
                               [], [helper.make_tensor_value_info("c", FLOAT, [4])])
    node = helper.make_node("Identity", ["logits"], ["out"])
    if where == "g":
        node.attribute.append(helper.make_attribute("then_branch", branch))
    else:
        node.attribute.append(helper.make_attribute("bodies", [branch]))
    model = _model()
    model.graph.node.append(node)
    with pytest.raises(ArtifactError, match="tensor 'c' points at external data '../../x.bin', "
                                            "which resolves outside"):
        check_onnx(_save(model, tmp_path / "m" / "model.onnx"))


def test_ops_are_counted_and_the_opset_read_from_either_name(tmp_path) -> None:
    model = _model()
    model.graph.node.append(helper.make_node("Identity", ["logits"], ["out"]))
    model.graph.node.append(helper.make_node("Identity", ["out"], ["out2"]))
    model.graph.output[0].name = "out2"
    model.opset_import[0].domain = "ai.onnx"
    summary = check_onnx(_save(model, tmp_path / "model.onnx"))
    assert summary["ops"] == {"ReduceMean": 1, "MatMul": 1, "Identity": 2}
    assert summary["opset"] == 18


def test_short_keeps_the_first_line_of_a_message() -> None:
    assert _short(ValueError("\n  first line  \nsecond")) == "first line"
    assert _short(ValueError("x" * 300)) == "x" * 200
    assert _short(KeyError()) == "KeyError"
