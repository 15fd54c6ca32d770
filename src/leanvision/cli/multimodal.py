"""The image + text verb `compare-fusions`. Training, eval, predict (--text), export, serve and
explain (--text) of fused models go through the usual verbs (`leanvision train DATA.csv
--text-columns ...`)."""

from __future__ import annotations

from .command import Opt, fields_of, out_console, verb

OPTIONS = "multimodal.compare:CompareFusionsOptions"

verb("compare-fusions", "multimodal:compare_fusions",
     "Image-only, text-only and each fusion trained alike; ranked by test (else val) top-1.",
     lambda: {**fields_of(OPTIONS), "data": Opt(argument=True), "fusions": Opt(type=str),
      "batch_size": None, "lr": None, "img_size": None,
      "max_tokens": None, "val_fraction": None, "device": None, "seed": None, "out": None},
     configs=(OPTIONS, "multimodal.config:MultimodalConfig", "training.config:TrainConfig"),
     context=("console", "progress"),
     show=lambda r: out_console.print(f"best: {r['best']} ({' > '.join(r['ranking'])}); "
                                      f"{r['json']}"))
