"""The training verbs: train (every TrainConfig field is an option), cv, lr-find, compare."""

from __future__ import annotations

import dataclasses
from typing import Any

from .command import Opt, Options, fields_of, find, out_console, verb

# The config's groups, named by their first field: `train --help` shows one panel per concern.
PANELS = {"data": "Data", "recipe": "Model", "epochs": "Optimisation", "augment": "Augmentation",
          "unlabeled": "Semi-supervised (--unlabeled)", "tta": "Inference",
          "device": "Hardware", "seed": "Run"}
TRAIN_CONFIG = "training.config:TrainConfig"
LR_FIND = "training.lr_find:LrFindOptions"
FIT = ("model", "epochs", "batch_size", "lr", "optimizer")


def _train_options() -> Options:
    options: Options = {
        "data": Opt(argument=True), "out": Opt(panel="Run"),
        "resume": Opt("Continue the run in this folder.", panel="Run")}
    panel = None
    for field in dataclasses.fields(find(TRAIN_CONFIG)):
        panel = PANELS.get(field.name, panel)
        if field.name != "data":
            options[field.name] = Opt(panel=panel)
    options["pretrained"] = Opt(type=str, panel="Model")
    options["progress"].default = None  # unset: bars when stderr is a terminal
    options.update(
        nproc=Opt("Data-parallel processes on this machine (one per GPU, or per CPU core); "
                  "--batch-size stays the global batch. Several machines: torchrun "
                  "(docs/scaling.md).", panel="Hardware"),
        port=Opt("--nproc: rendezvous port (default: a free one).", panel="Hardware"),
        track=Opt(panel="Run", flag="--track"), track_uri=Opt(panel="Run"))
    # image + text models (leanvision.multimodal); unset ones take MultimodalConfig's defaults
    for key in ("text_columns", "fusion", "text_encoder", "text_finetune", "max_tokens",
                "empty_text"):
        options[key] = Opt(default=None, panel="Image + text (--text-columns)")
    return options


def _pretrained(value: str | None) -> bool | str | None:
    if value is None or value == "auto":
        return None
    if value.lower() in ("yes", "true", "1"):
        return True
    if value.lower() in ("no", "false", "0"):
        return False
    return value


def _train(data: str, out: Any, resume: Any, nproc: int, port: Any, track: bool,
           track_uri: Any, console: Any, **settings: Any) -> dict[str, Any]:
    if resume is not None:  # the run's saved settings hold; only --epochs may grow
        settings = {k: settings.get(k) for k in ("epochs", "progress")}
    else:
        settings["pretrained"] = _pretrained(settings.get("pretrained"))
    return find("training:train")(data, out, resume=resume, console=console, nproc=nproc,
                                  port=port, track=track, track_uri=track_uri, **settings)


def _say(template: str) -> Any:
    return lambda result: out_console.print(template.format(**result))


verb("train", "training:train",
     "Train a classifier on DATA and write an artifact folder.",
     _train_options, configs=(TRAIN_CONFIG, "multimodal.config:MultimodalConfig"), call=_train,
     context=("console", "progress"),
     show=_say("artifact: {artifact}"))

verb("cv", "cv:cross_validate",
     "Stratified k-fold cross-validation: one model per fold, mean and spread of metrics.",
     {"data": Opt(argument=True), "folds": "Number of stratified folds.", "out": None,
      **dict.fromkeys(FIT), "augment": None, "skip_bad_images": None, "device": None,
      "seed": None},
     configs=(TRAIN_CONFIG,), context=("console", "progress"),
     show=lambda r: out_console.print(
         f"top-1 {r['mean']['top1']:.4f} ± {r['std']['top1']:.4f} over {len(r['per_fold'])} "
         f"folds; {r['out']}/cv.json"))

verb("lr-find", "training.lr_find:lr_find",
     "Learning-rate range test: suggest a learning rate for training on DATA.",
     lambda: {"data": Opt(argument=True, default="builtin:digits"), "out": None,
              "model": None, "optimizer": None, "batch_size": None, **fields_of(LR_FIND),
              "skip_bad_images": None, "device": None, "seed": None},
     configs=(LR_FIND, TRAIN_CONFIG), context=("console", "progress"),
     show=lambda r: out_console.print(
         f"suggested lr {r['suggested_lr']:.3g} for {r['optimizer']} (min-loss lr / 10: "
         f"{r['min_loss_lr']:.3g}); plot {r['plot']}"))

verb("compare", "training.compare:compare",
     "Train once per optimizer, each at its lr-find rate; rank by validation top-1.",
     {"data": Opt(argument=True, default="builtin:digits"),
      "optimizers": Opt("Comma-separated optimizer names.", type=str), "epochs": None,
      "model": None, "batch_size": None, "find_steps": "Steps of each learning-rate range test.",
      "val_fraction": None, "out": None,
      "skip_bad_images": None, "device": None, "seed": None},
     configs=(TRAIN_CONFIG,), context=("console", "progress"),
     show=lambda r: out_console.print(f"best: {r['best']} ({' > '.join(r['ranking'])}); "
                                      f"{r['json']}"))
