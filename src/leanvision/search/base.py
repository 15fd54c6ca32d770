"""The base model of a search: the user's --base (checked, copied into OUT/base) or one trained
with the default recipe, made once and reused on resume; and the settings every stage built on
it reads the data with."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

from ..artifact import read_card, require_image_only
from ..errors import BudgetError, ConfigError
from .schedule import BASE_SHARE, base_minutes
from .space import Budget
from .stages import StageCache, artifact_identity, copy_artifact, stage_key, train_base


def check_base(base: Path, classes: list[str], data_spec: str) -> None:
    _, card = read_card(base)
    require_image_only(card, base, "optimize")
    if list(card["classes"]) != list(classes):
        raise ConfigError(f"--base {base} is a base artifact from other data: its classes "
                          f"({_names(card['classes'])}) are not those of {data_spec} "
                          f"({_names(classes)}). Pass an artifact trained on {data_spec}, or "
                          "leave --base out to train one")


def skip_bad_choice(explicit: bool | None, base: str | Path | None) -> bool:
    """Whether the search leaves out unreadable images: the user's flag, else what --base was
    trained with (its trials re-read the data it was trained on: a base trained without 18
    unreadable images had every INT8 trial fail on them), else no."""
    if explicit is not None:
        return bool(explicit)
    if base is None:
        return False
    return bool(read_card(base)[1].get("config", {}).get("skip_bad_images", False))


def skip_bad_setting(skip_bad_images: bool) -> dict[str, bool]:
    """The TrainConfig field for stage settings and keys, present only when set: the keys of
    searches that read every image stay those made before the choice existed, so their
    OUT/base and stages are still found on resume."""
    return {"skip_bad_images": True} if skip_bad_images else {}


def make_base(base: str | Path | None, data_spec: str, data_id: str, out_dir: Path,
              budget: Budget, console: Console, skip_bad_images: bool = False,
              time_budget: float | None = None) -> tuple[Path, str]:
    """OUT/base: a copy of --base (so that exports and measurements stay inside OUT), or a
    base trained with the default recipe; either is made once and reused on resume.
    `time_budget`: optimize's minutes, of which the base gets its share (not part of its key:
    a resumed run reuses it)."""
    folder = out_dir / "base"
    cache = StageCache(out_dir / "stages")
    if base is not None:
        identity = artifact_identity(base)
        run = cache.run("base", "external", {"identity": identity},
                        lambda f: copy_artifact(Path(base), f), folder=folder)
        console.print(f"base: {base} ({identity[:19]}), copied to {folder}")
        return folder, run.key
    settings = {**budget.base_settings, **skip_bad_setting(skip_bad_images)}
    console.print(f"base: training with the default recipe into {folder} (once)")
    minutes = base_minutes(time_budget)
    try:
        run = cache.run("train", "data", {"data": data_id, "settings": settings},
                        lambda f: train_base(data_spec, f, {**settings, "time_budget": minutes}),
                        folder=folder)
    except BudgetError as exc:
        raise _in_optimize_words(exc, time_budget) from None
    console.print(f"base: {'reused' if run.cached else f'trained in {run.seconds:.0f} s'}")
    return folder, run.key


def _in_optimize_words(exc: BudgetError, time_budget: float | None) -> BudgetError:
    """The base's refusal in the words of the command the user ran: optimize's --time-budget,
    of which the base gets BASE_SHARE, and the optimize budget that would hold it."""
    d = exc.details
    if time_budget is None or "suggested_minutes" not in d:
        return exc
    suggested = math.ceil(d["suggested_minutes"] / BASE_SHARE)
    return BudgetError(f"optimize --time-budget {time_budget:g} minutes gives the base "
                       f"{BASE_SHARE:.0%} of it ({d['budget_minutes']:g} minutes), which cannot "
                       f"fit {d['what']}: {d['detail']}; pass --time-budget {suggested} or "
                       "more, or use fewer images", details={**d, "suggested_minutes": suggested,
                                                             "budget_minutes": time_budget})


def data_identity(spec: str, source) -> str:
    """What the data is (spec, classes, image counts): part of every stage key."""
    counts = [len(r) for r in (source.train, source.val, source.test) if r is not None]
    return f"{spec}|{stage_key('', 'classes', {'c': list(source.classes)})[:8]}|{counts}"


def _names(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown
                                       else "")
