"""The training verbs: train (every TrainConfig field is an option), cv, lr-find, compare and
compare-fusions."""

from __future__ import annotations

import dataclasses

from .command import ARG, DIGITS, RUN_ON, Opt, Options, fields_of, find, keys, verb

# The config's groups, named by their first field: `train --help` shows one panel per concern.
PANELS = {"data": "Data", "recipe": "Model", "epochs": "Optimisation", "augment": "Augmentation",
          "unlabeled": "Semi-supervised (--unlabeled)", "tta": "Inference",
          "device": "Hardware", "seed": "Run"}
TRAIN_CONFIG = "training.config:TrainConfig"
LR_FIND = "training.tuning.lr_find:LrFindOptions"


def _train_options() -> Options:
    options: Options = {"data": ARG, "out": Opt(panel="Run"),
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


# With --resume only what the user types reaches train(), which allows --epochs alone.
verb("train", "training:train", "Train a classifier on DATA and write an artifact folder.",
     _train_options, configs=(TRAIN_CONFIG, "multimodal.config:MultimodalConfig"),
     show="artifact: {artifact}")

verb("cv", "cv:cross_validate",
     "Stratified k-fold cross-validation: one model per fold, mean and spread of metrics.",
     {"data": ARG, "folds": "Number of stratified folds.", "out": None,
      **keys("model", "epochs", "batch_size", "lr", "optimizer", "augment"), **RUN_ON},
     configs=(TRAIN_CONFIG,), show="cv:print_cross_validation")

verb("lr-find", "training.tuning.lr_find:lr_find",
     "Learning-rate range test: suggest a learning rate for training on DATA.",
     lambda: {"data": DIGITS, **keys("out", "model", "optimizer", "batch_size"),
              **fields_of(LR_FIND), **RUN_ON},
     configs=(LR_FIND, TRAIN_CONFIG), show="suggested lr {suggested_lr:.3g} for {optimizer} "
     "(min-loss lr / 10: {min_loss_lr:.3g}); plot {plot}")

verb("compare", "training.tuning.compare:compare",
     "Train once per optimizer, each at its lr-find rate; rank by validation top-1.",
     {"data": DIGITS, "optimizers": Opt("Comma-separated optimizer names.", type=str),
      **keys("epochs", "model", "batch_size"), "find_steps": "Steps of each learning-rate range "
      "test.", **keys("val_fraction", "out"), **RUN_ON},
     configs=(TRAIN_CONFIG,), show="training.report:print_ranking")

# Image + text models train, evaluate, predict (--text), export, serve and explain through the
# usual verbs (`leanvision train DATA.csv --text-columns ...`); this compares their fusions.
FUSIONS = "multimodal.compare:CompareFusionsOptions"
verb("compare-fusions", "multimodal:compare_fusions",
     "Image-only, text-only and each fusion trained alike; ranked by val top-1 (test reported).",
     lambda: {**fields_of(FUSIONS), "data": ARG, "fusions": Opt(type=str), **keys(
         "batch_size", "lr", "img_size", "max_tokens", "val_fraction", "device", "seed", "out")},
     configs=(FUSIONS, "multimodal.config:MultimodalConfig", TRAIN_CONFIG),
     show="training.report:print_ranking")
