"""The image + text verb `compare-fusions`. Training, eval, predict (--text), export, serve and
explain (--text) of fused models go through the usual verbs (`leanvision train DATA.csv
--text-columns ...`)."""

from __future__ import annotations

from .command import Opt, out_console, verb

verb("compare-fusions", "multimodal:compare_fusions",
     "Image-only, text-only and each fusion trained alike; ranked by test (else val) top-1.",
     {"data": Opt("CSV with path, label and text columns.", argument=True),
      "text_columns": "Text columns (comma-separated).",
      "fusions": Opt("Fusion strategies to compare.", type=str),
      "baselines": "Also train image-only and text-only models.",
      "text_encoder": "hashed or minilm.",
      "model": "Image network (default: from the recipe).",
      "epochs": "The same for every run.", "batch_size": None, "lr": None, "img_size": None,
      "max_tokens": None, "val_fraction": None, "device": None, "seed": None, "out": None},
     configs=("multimodal.config:MultimodalConfig", "training.config:TrainConfig"),
     context=("console", "progress"),
     show=lambda r: out_console.print(f"best: {r['best']} ({' > '.join(r['ranking'])}); "
                                      f"{r['json']}"))
