"""Predictor: the same decoding and normalisation whatever the runtime, the same top-1 from
PyTorch, ONNX Runtime FP32 and INT8, the runtime choice, and refusals of damaged or unsafe
ONNX files (missing, truncated, external data outside the folder, another model's file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import FAST, make_image_folder
from PIL import Image
from rich.console import Console

from leanvision.data import ImageChecks, decode_images, load_data, normalize
from leanvision.errors import ArtifactError, ConfigError
from leanvision.runtime.export import export_onnx
from leanvision.runtime.onnx_file import check_onnx
from leanvision.runtime.ort_quant import quantize_onnx_static
from leanvision.runtime.predictor import Predictor, available_runtimes
from leanvision.training.api import train

pytestmark = pytest.mark.usefixtures("one_thread")
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny trained artifact with model.onnx and model.int8.onnx beside its weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("predictor")
        data = make_image_folder(root / "data", per_class=10)
        folder = root / "art"
        train(data, folder, console=Console(quiet=True), **FAST)
        from leanvision.artifact import load

        art = load(folder)
        export_onnx(art.model, art.input_size, folder / "model.onnx", batch=4)
        train_images = decode_images(load_data(data).train, art.input_size, ImageChecks())
        calibration = normalize(train_images.images, art.mean, art.std).numpy()
        quantize_onnx_static(folder / "model.onnx", folder / "model.int8.onnx", calibration)
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "data": data, "folder": folder}


def _copy(folder: Path, target: Path, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns(*without))
    return target


def _edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / "model.json").read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            card[section][field] = value
        else:
            card[key] = value
    (folder / "model.json").write_text(json.dumps(card))


def test_runtimes_share_preprocessing_and_agree_on_top1(exported, tmp_path) -> None:
    data = exported["data"]
    files = sorted(data.glob("*/*.png"))[::3]
    bad = tmp_path / "broken.png"
    bad.write_bytes(files[0].read_bytes()[:60])  # a truncated PNG
    rgba = Image.open(files[1]).convert("RGBA")
    images = [*files, bad, rgba]
    seen, answers = {}, {}
    for runtime in RUNTIMES:
        predictor = Predictor.from_artifact(exported["folder"], runtime=runtime, threads=1)
        assert predictor.runtime == runtime and predictor.threads == 1
        assert predictor.classes == ["blue", "green", "red"]
        inner = predictor._runner
        inputs = []
        predictor._runner = lambda x, inner=inner, inputs=inputs: (inputs.append(x.copy()),
                                                                   inner(x))[1]
        answers[runtime] = predictor.predict_images(images, top_k=2)
        seen[runtime] = np.concatenate(inputs)
    for runtime in RUNTIMES[1:]:  # the very same network input, bit for bit
        np.testing.assert_array_equal(seen[runtime], seen["torch"])
    assert seen["torch"].shape == (len(files) + 1, 3, 32, 32)  # resnet8 default size
    top1 = {r: [a["top"][0]["class"] if "top" in a else a["error"] for a in answers[r]]
            for r in RUNTIMES}
    assert top1["onnx-fp32"] == top1["torch"] and top1["onnx-int8"] == top1["torch"]
    assert answers["torch"][len(files)] == {"image": str(bad), "error": "truncated image"}
    truth = [f.parent.name for f in files]
    assert top1["torch"][:len(files)] == truth  # the colours are easy: the model is right
    assert len(answers["torch"][0]["top"]) == 2
    probs = [a["top"][0]["prob"] for a in answers["onnx-fp32"] if "top" in a]
    expected = [a["top"][0]["prob"] for a in answers["torch"] if "top" in a]
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_logits_take_uint8_or_normalised_images_and_apply_the_cards_tta(exported,
                                                                        tmp_path) -> None:
    folder = _copy(exported["folder"], tmp_path / "flip")
    _edit_card(folder, inference__tta="flip")
    predictor = Predictor.from_artifact(folder, runtime="onnx-fp32", threads=1)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    x = normalize(images, predictor.mean, predictor.std)
    raw = predictor.run_normalised(x)
    mirrored = predictor.run_normalised(x.flip(-1).numpy())
    assert raw.shape == (3, 3) and raw.dtype == np.float32
    np.testing.assert_allclose(predictor.logits(images), (raw + mirrored) / 2, atol=1e-5)
    np.testing.assert_allclose(predictor.logits(x), predictor.logits(images.numpy()), atol=1e-6)
    with pytest.raises(ConfigError, match=r"\[N, 3, H, W\]"):
        predictor.run_normalised(np.zeros((3, 32, 32), np.float32))


def test_auto_follows_the_card_then_the_files(exported, tmp_path) -> None:
    folder = exported["folder"]
    # model.onnx also serves OpenVINO (optional; see test_openvino.py), which auto never picks
    # without a card's recommendation.
    assert available_runtimes(folder) == ["torch", "torch-compile", "onnx-fp32", "onnx-int8",
                                          "openvino-fp32"]
    assert Predictor.from_artifact(folder, threads=1).runtime == "onnx-int8"
    recommended = _copy(folder, tmp_path / "recommended")
    _edit_card(recommended, recommended_runtime="onnx-fp32")
    assert Predictor.from_artifact(recommended, threads=1).runtime == "onnx-fp32"
    fp32_only = _copy(folder, tmp_path / "fp32", without=("model.int8.onnx",))
    assert Predictor.from_artifact(fp32_only, threads=1).runtime == "onnx-fp32"
    with pytest.raises(ArtifactError, match=r"no model.int8.onnx .*leanvision quantize"):
        Predictor.from_artifact(fp32_only, runtime="onnx-int8")
    plain = _copy(folder, tmp_path / "plain", without=("*.onnx",))
    assert Predictor.from_artifact(plain, threads=1).runtime == "torch"
    with pytest.raises(ConfigError, match="--runtime 'tensorrt'"):
        Predictor.from_artifact(folder, runtime="tensorrt")


def test_onnx_threads_spin_unless_told_not_to(exported) -> None:
    # The server turns spinning off: between batches its cores parse HTTP and decode images.
    def spinning(predictor: Predictor) -> str:
        options = predictor._runner.session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    folder = exported["folder"]
    assert spinning(Predictor.from_artifact(folder, runtime="onnx-int8", threads=1)) == "1"
    calm = Predictor.from_artifact(folder, runtime="onnx-fp32", threads=1, spin=False)
    assert spinning(calm) == "0"
    x = np.zeros((2, 3, *calm.input_size), dtype=np.uint8)
    busy = Predictor.from_artifact(folder, runtime="onnx-fp32", threads=1)
    np.testing.assert_allclose(calm.logits(x), busy.logits(x), rtol=1e-6)


def test_card_preprocessing_that_cannot_be_honoured_is_refused(exported, tmp_path) -> None:
    folder = _copy(exported["folder"], tmp_path / "squash")
    _edit_card(folder, input__resize="squash")
    with pytest.raises(ArtifactError, match="input.resize 'squash'"):
        Predictor.from_artifact(folder, runtime="torch")
    _edit_card(folder, input__resize="shorter-side+center-crop", input__interpolation="magic")
    with pytest.raises(ArtifactError, match="input.interpolation 'magic'"):
        Predictor.from_artifact(folder, runtime="torch")


def test_damaged_or_foreign_onnx_files_are_refused(exported, tmp_path) -> None:
    folder = _copy(exported["folder"], tmp_path / "damaged")
    whole = (folder / "model.int8.onnx").read_bytes()
    (folder / "model.int8.onnx").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ArtifactError, match="damaged; re-export it with `leanvision export`"):
        Predictor.from_artifact(folder, runtime="onnx-int8")
    (folder / "model.int8.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"empty \(0 bytes\)"):
        Predictor.from_artifact(folder)
    onnx_file = exported["folder"] / "model.onnx"
    summary = check_onnx(onnx_file, num_classes=3, input_size=(32, 32))
    assert summary["input"]["shape"][1:] == [3, 32, 32] and summary["output"]["shape"][1] == 3
    assert summary["external_data"] == [] and summary["ops"]["Conv"] > 0
    with pytest.raises(ArtifactError, match="outputs 3 classes but the card lists 10"):
        check_onnx(onnx_file, num_classes=10)
    with pytest.raises(ArtifactError, match="input is 32x32 px but the card says 64x64"):
        check_onnx(onnx_file, input_size=(64, 64))
    with pytest.raises(ArtifactError, match="does not exist"):
        check_onnx(tmp_path / "nothing.onnx")


@pytest.mark.parametrize("location", ["/etc/hostname", "../outside.bin", "data/../../x.bin"])
def test_external_data_outside_the_folder_is_refused(exported, tmp_path, location) -> None:
    folder = tmp_path / "ext"
    folder.mkdir()
    model = onnx.load(str(exported["folder"] / "model.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert check_onnx(folder / "model.onnx")["external_data"] == ["weights.bin"]
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(ArtifactError, match="refusing to read"):
        check_onnx(folder / "model.onnx")


def test_predictor_refuses_an_artifact_whose_onnx_reads_data_outside_it(exported,
                                                                        tmp_path) -> None:
    """The check guards the runtime, not only check_onnx: the outside file exists and holds
    the right weights, so ONNX Runtime would load it if the Predictor skipped the check."""
    folder = _copy(exported["folder"], tmp_path / "art", without=("model.int8.onnx",))
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)
    assert Predictor.from_artifact(folder, runtime="onnx-fp32").runtime == "onnx-fp32"
    shutil.move(folder / "weights.bin", tmp_path / "weights.bin")  # beside, not inside
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(ArtifactError, match="refusing to read"):
        Predictor.from_artifact(folder, runtime="onnx-fp32")


def test_predict_function_runs_any_runtime_with_the_same_answers(exported) -> None:
    import leanvision

    files = sorted(exported["data"].glob("*/*.png"))[::4]
    answers = {runtime: leanvision.predict(exported["folder"], files, top_k=2, runtime=runtime)
               for runtime in ("torch", "onnx-fp32", "auto")}
    tops = {r: [a["top"][0]["class"] for a in answers[r]] for r in answers}
    assert tops["torch"] == tops["onnx-fp32"] == tops["auto"]
    probs = [a["top"][0]["prob"] for a in answers["onnx-fp32"]]
    assert probs == pytest.approx([a["top"][0]["prob"] for a in answers["torch"]], abs=1e-4)
