"""`leanvision quantize ARTIFACT --method qat`: quantisation-aware fine-tuning, then an INT8 QDQ
ONNX model made by ONNX Runtime's own static quantiser.

Path (torch.ao.quantization is gone from current PyTorch, and the dynamo ONNX exporter does not
translate fake-quant ops): batch norm is folded into the convolutions, every Conv2d / Linear
trains through fake quantisation that mirrors ORT's QDQ settings exactly (int8 symmetric
per-output-channel weights, uint8 asymmetric per-tensor inputs), then the plain network is
exported to FP32 ONNX and quantised by ORT with calibration images from the training split.

    artifact ─ fold BN ─ QAT modules ─ train_on(stage="quantize") ─ plain modules
             ─ model.onnx ─ quantize_static (QDQ) ─ model.int8.onnx ─ INT8 top-1 in ORT"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from ..artifact import CARD_FILE, Artifact, read_card
from ..data import DataSource
from ..data.partition import partition
from ..errors import ConfigError
from ..evaluate import evaluate_records, model_cost
from ..io import write_json
from ..models.fold import fold_batchnorm
from ..runtime.export import export_onnx
from ..runtime.ort_quant import CALIBRATION_METHODS, quantize_onnx_static
from ..training.api import StartModel, train_on
from ..training.config import TrainConfig
from ..training.optim import default_lr
from .ptq import INT8_FILE, ONNX_FILE, calibration_images, onnx_top1, scoring_set

INT8_MAX = 127  # symmetric int8 weights use [-127, 127] (ORT drops -128)
UINT8_MAX = 255
# Parent settings a QAT fine-tune keeps: the same split (no peeking at the parent's val images),
# the same optimizer family and regularisation, the same inference.
INHERITED = ("data", "val_fraction", "seed", "skip_bad_images", "balance", "cache_dir",
             "optimizer", "momentum", "weight_decay", "batch_size", "label_smoothing",
             "grad_clip", "translate", "tta", "device", "workers", "progress")


@dataclass
class QATConfig:
    method: str = "qat"
    epochs: int = 2  # the network is trained already; fake-quant noise needs a short adaptation
    lr: float | None = None  # None: the parent's rate x lr_factor
    lr_factor: float = 1 / 20
    calibration_images: int = 512
    calibrate: str = "minmax"
    observer_steps: int = 100  # input ranges follow the data this long, then stay fixed
    observer_momentum: float = 0.1

    def __post_init__(self) -> None:
        if self.method != "qat":
            raise ConfigError(f"QATConfig is for --method qat, not {self.method!r}")
        if self.calibrate not in CALIBRATION_METHODS:
            raise ConfigError(f"--calibrate {self.calibrate!r} is not one of "
                              f"{', '.join(CALIBRATION_METHODS)}")
        if not 1 <= self.epochs <= 1000:
            raise ConfigError(f"--epochs {self.epochs} must be between 1 and 1000")
        if self.lr is not None and not 0 < self.lr <= 10:
            raise ConfigError(f"--lr {self.lr} must be in (0, 10]")
        if not 0 < self.lr_factor <= 1:
            raise ConfigError(f"lr_factor {self.lr_factor} must be in (0, 1]")
        if self.calibration_images < 1:
            raise ConfigError(f"--calibration-images {self.calibration_images} must be >= 1")
        if self.observer_steps < 1 or not 0 < self.observer_momentum <= 1:
            raise ConfigError("observer_steps must be >= 1 and observer_momentum in (0, 1]")


# --- fake quantisation: the numbers ORT's quantiser will produce ----------------------------

def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel int8 symmetric scale [out], as ORT's compute_scale_zp: the range is
    widened to include 0, scale = float32(float64(2 max|w|) / 254); a scale below float32's tiny
    becomes 1."""
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.ndim))).double()
    scale = absmax * 2 / (2 * INT8_MAX)
    return torch.where(scale < torch.finfo(torch.float32).tiny, 1.0, scale).float()


def fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    """w rounded to its int8 grid (round half to even of w / scale, as numpy), with a
    straight-through gradient."""
    scale = weight_scale(weight).view(-1, *([1] * (weight.ndim - 1)))
    q = torch.clamp(torch.round(weight.detach() / scale), -INT8_MAX, INT8_MAX)
    return weight + (q * scale - weight).detach()


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 asymmetric (scale, zero point) for the range [low, high], as ORT computes them."""
    low, high = low.double().clamp(max=0), high.double().clamp(min=0)
    scale = (high - low) / UINT8_MAX
    tiny = scale < torch.finfo(torch.float32).tiny
    zero_point = torch.round(-low / torch.where(tiny, 1.0, scale)).clamp(0, UINT8_MAX)
    scale = torch.where(tiny, 1.0, scale)
    zero_point = torch.where(tiny, 0.0, zero_point)
    return scale.float().reshape(1), zero_point.to(torch.int32).reshape(1)


class _FakeQuant:
    """Input observer + fake quantisation shared by the QAT layers. Its state is buffers that
    are not saved (persistent=False), so state_dict keys equal the plain layer's."""

    def _setup(self, steps: int, momentum: float) -> None:
        device = self.weight.device
        self.register_buffer("input_low", torch.zeros((), device=device), persistent=False)
        self.register_buffer("input_high", torch.zeros((), device=device), persistent=False)
        self.register_buffer("observed", torch.zeros((), dtype=torch.long, device=device),
                             persistent=False)
        self.observer_steps, self.observer_momentum = steps, momentum

    def _quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and int(self.observed) < self.observer_steps:
            self._observe(x.detach().float())
        if int(self.observed) == 0:
            return x  # never saw data: nothing to base a range on
        scale, zero_point = activation_qparams(self.input_low, self.input_high)
        quantised = torch.fake_quantize_per_tensor_affine(x.detach().float(), scale, zero_point,
                                                          0, UINT8_MAX).to(x.dtype)
        return x + (quantised - x).detach()

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        low, high = x.min(), x.max()
        if int(self.observed) == 0:
            self.input_low.copy_(low)
            self.input_high.copy_(high)
        else:  # an EMA of batch extremes: one outlier batch does not set the range for good
            self.input_low.lerp_(low, self.observer_momentum)
            self.input_high.lerp_(high, self.observer_momentum)
        self.observed += 1


class QATConv2d(_FakeQuant, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._quant_input(x), fake_quant_weight(self.weight), self.bias)


class QATLinear(_FakeQuant, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._quant_input(x), fake_quant_weight(self.weight), self.bias)


def _twin(module: nn.Module, cls: type) -> nn.Module:
    """A `cls` layer with the same hyper-parameters that holds `module`'s own Parameters."""
    if isinstance(module, nn.Conv2d):
        twin = cls(module.in_channels, module.out_channels, module.kernel_size,
                   stride=module.stride, padding=module.padding, dilation=module.dilation,
                   groups=module.groups, bias=module.bias is not None,
                   padding_mode=module.padding_mode, device="meta")
    else:
        twin = cls(module.in_features, module.out_features, bias=module.bias is not None,
                   device="meta")
    twin.weight = module.weight
    twin.bias = module.bias
    twin.train(module.training)
    return twin


def prepare_qat(model: nn.Module, cfg: QATConfig | None = None) -> tuple[list[str], list[str]]:
    """Swap every plain Conv2d / Linear for its QAT twin, in place. Returns (swapped, kept):
    subclasses (timm's Conv2dSame, StdConv2d, ...) keep their own forward and train in float."""
    cfg = cfg or QATConfig()
    swapped, kept = [], []
    for name, module in list(model.named_modules()):
        plain = {nn.Conv2d: QATConv2d, nn.Linear: QATLinear}.get(type(module))
        if plain is None:
            if isinstance(module, nn.Conv2d | nn.Linear) and not isinstance(module, _FakeQuant):
                kept.append(name)
            continue
        twin = _twin(module, plain)
        twin._setup(cfg.observer_steps, cfg.observer_momentum)
        _set_module(model, name, twin)
        swapped.append(name)
    return swapped, kept


def restore_float(model: nn.Module) -> list[str]:
    """Swap the QAT layers back to plain Conv2d / Linear (same Parameters), in place."""
    restored = []
    for name, module in list(model.named_modules()):
        if isinstance(module, _FakeQuant):
            plain = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
            _set_module(model, name, _twin(module, plain))
            restored.append(name)
    return restored


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


# --- the stage ----------------------------------------------------------------------------------

def qat_train_config(parent: dict[str, Any], data_spec: str, qcfg: QATConfig,
                     overrides: dict[str, Any]) -> TrainConfig:
    """The fine-tune's TrainConfig: the parent's split and optimizer at a small rate, short,
    fp32 (fake quantisation under bf16 would round the rounding), without weight averaging."""
    base = {k: parent[k] for k in INHERITED if parent.get(k) is not None}
    optimizer = base.get("optimizer", "adamw")
    parent_lr = parent.get("lr") or default_lr(optimizer, base.get("batch_size", 64))
    settings = {**base, "data": data_spec, "model": parent.get("model"), "pretrained": False,
                "finetune": "full", "epochs": qcfg.epochs,
                "lr": qcfg.lr if qcfg.lr is not None else parent_lr * qcfg.lr_factor,
                "schedule": "cosine", "warmup_epochs": 0.0, "ema": False, "ema_decay": 0.0,
                "lookahead": False, "augment": "light", "mixup": 0.0, "cutmix": 0.0,
                "norm_lr_scale": 1.0, "precision": "fp32", "early_stop": None}
    return TrainConfig.from_dict({**settings, **overrides})


def run_qat(art: Artifact, source: DataSource, cfg: TrainConfig, qcfg: QATConfig,
            out_dir: Path, console: Console) -> dict[str, Any]:
    model = art.model.float().eval()
    pairs = fold_batchnorm(model, statistics=True)
    transforms = list(art.card.get("transforms", []))
    if pairs:
        transforms.append({"kind": "fold_bn", "pairs": [list(p) for p in pairs]})
    swapped, kept = prepare_qat(model, qcfg)
    start = StartModel.from_artifact(art, model=model, transforms=transforms)
    summary = train_on(source, cfg, out_dir, console=console, start=start, stage="quantize",
                       parent=str(art.path))
    restore_float(model)
    record = {"method": "qat", "folded_bn": len(pairs), "fake_quant_layers": len(swapped),
              "kept_float": kept, "qat": asdict(qcfg)}
    return _deploy_int8(model, out_dir, source, cfg, qcfg, record, summary, console)


def _deploy_int8(model: nn.Module, out_dir: Path, source: DataSource, cfg: TrainConfig,
                 qcfg: QATConfig, record: dict[str, Any], summary: dict[str, Any],
                 console: Console) -> dict[str, Any]:
    """Export the (plain, float) model, quantise it with ORT, score both, complete the card."""
    _, card = read_card(out_dir)
    art = Artifact(path=out_dir, card=card, model=model.eval())
    parts = partition(source, cfg.val_fraction, cfg.seed)
    exported = export_onnx(model, art.input_size, out_dir / ONNX_FILE)
    calibration = calibration_images(art, parts.train, qcfg.calibration_images, cfg.seed)
    quantised = quantize_onnx_static(out_dir / ONNX_FILE, out_dir / INT8_FILE, calibration,
                                     calibrate=qcfg.calibrate, per_channel=True)
    metrics = dict(card.get("metrics", {}))
    int8: dict[str, Any] = {}
    for split in ("val", "test"):
        records = getattr(parts, split)
        if records is None or not len(records):
            continue
        # The fine-tune scored the fake-quant network; the card's fp32 figures are the plain one.
        if split in metrics:
            metrics.setdefault("fake_quant", {})[split] = {"top1": metrics[split]["top1"]}
        fp32 = evaluate_records(art, records, split, str(cfg.data),
                                skip_bad_images=cfg.skip_bad_images, device="cpu")["metrics"]
        metrics[split] = fp32
        int8[split] = onnx_top1(out_dir / INT8_FILE,
                                scoring_set(art, records, split, cfg.skip_bad_images))
    files = {name: {"file": name, "bytes": (out_dir / name).stat().st_size}
             for name in ("model.safetensors", ONNX_FILE, INT8_FILE)}
    int8["size_bytes"] = files[INT8_FILE]["bytes"]
    metrics.update(model_cost(model, art.input_size, out_dir))
    metrics["int8"] = int8
    card["metrics"] = metrics
    card["quantization"] = {
        **record, "format": "QDQ", "activations": "uint8 per-tensor",
        "weights": "int8 per-channel symmetric",
        "calibration": {**quantised["calibration"], "split": "train"},
        "nodes": {"QuantizeLinear": quantised["q_nodes"],
                  "DequantizeLinear": quantised["dq_nodes"]},
        "export": {k: exported[k] for k in ("opset", "max_abs_error")},
        "files": files,
    }
    write_json(out_dir / CARD_FILE, card)
    _print_result(console, metrics, files)
    return {**summary, "metrics": metrics, "quantization": card["quantization"]}


def _print_result(console: Console, metrics: dict[str, Any], files: dict[str, Any]) -> None:
    for split, scored in metrics["int8"].items():
        if isinstance(scored, dict):
            console.print(f"{split}: fp32 top-1 {metrics[split]['top1']:.4f}, "
                          f"int8 (ONNX Runtime) top-1 {scored['top1']:.4f}")
    sizes = ", ".join(f"{f['file']} {f['bytes'] / 1e6:.2f} MB" for f in files.values())
    console.print(f"files: {sizes}")
