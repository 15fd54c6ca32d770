"""How figures read in tables and messages, written once so that every table agrees."""

from __future__ import annotations


def percent(value: float | None, *, sign: str = "%", missing: str = "—") -> str:
    """A fraction as a percentage with two decimals: 0.9123 -> "91.23%". `sign`: "" where the
    column header already says %; `missing`: what an unmeasured figure (None) shows."""
    return missing if value is None else f"{100 * value:.2f}{sign}"


QUANT_WORDS = {"none": "FP32", "ptq": "INT8", "qat": "INT8 QAT"}


def pipeline_name(network: str, *, distilled: bool = False, side: int = 0,
                  prune: float = 0.0, kd: bool = False, quant: str = "none") -> str:
    """A model's making in a few words, short enough for a terminal table and a chart's key:
    "resnet8 ← KD · INT8", "base · 160px · prune 50% ← KD · INT8 QAT". `network`: the network
    it starts from ("base", or an architecture); `distilled`: that network was distilled from
    its parent (a student); `side`: a smaller input side it was re-fitted to; `prune`: the
    share of FLOPs pruned away, `kd`: then distilled; `quant`: none, ptq or qat."""
    parts = [network + (" ← KD" if distilled else "")]
    if side:
        parts.append(f"{side}px")
    if prune:
        parts.append(f"prune {prune:.0%}" + (" ← KD" if kd else ""))
    parts.append(QUANT_WORDS.get(quant, quant.upper()))
    return " · ".join(parts)
