"""The typer app, the error handling every verb shares, and `verb`: one call that turns an API
function (and the config dataclasses behind its **settings) into a command, so an option's type,
default and help are written once, where the setting lives."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ..errors import LeanvisionError, as_flags
from ..setting import SharedOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and inspect image classifiers on the hardware at hand.")
out_console = Console()
err_console = Console(stderr=True)
# The verb being run (set by main): only its options are built, so `leanvision --help` imports
# no stage and `leanvision eval` no training code. None (an embedded `app`): every verb's.
RUNNING: str | None = None

COMMON_HELP = {f.name: f.metadata["help"] for f in dataclasses.fields(SharedOptions)}
# --skip-bad-images of a verb that reads data for a trained model (eval, robustness).
SKIP_AS_TRAINED = ("Leave out images that cannot be decoded (default: as the model's training "
                   "did).")
# CLI types of parameters whose API annotation is a union the command line cannot parse.
NAMED_TYPES = {"artifact": Path, "data": str, "out": Path, "resume": Path, "images": list[Path],
               "artifacts": list[Path], "paths": list[Path], "teacher": Path, "base": Path,
               "bench": Path, "target": Path, "student": str, "text_columns": str}
SIMPLE_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclasses.dataclass
class Opt:
    """How one option differs from what its API parameter or config field says."""

    help: str | None = None
    type: Any = None
    default: Any = inspect.Parameter.empty
    flag: str | None = None
    panel: str | None = None
    argument: bool = False


# Taken by a decorator (tracking.tracked) rather than named in the API's signature.
TRACKING = {"track": Opt(type=bool, default=False, flag="--track"), "track_uri": Opt(type=str)}
Options = dict[str, Opt | str | None]


def find(ref: str) -> Any:
    """'compress.prune:PruneConfig' -> the object, imported when a command needs it."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(f"leanvision.{module}"), name)


def fields_of(ref: str) -> Options:
    return dict.fromkeys(f.name for f in dataclasses.fields(find(ref)))


@dataclasses.dataclass(eq=False)
class Command:
    """A verb: `api` ('module:function') with `options` (or a function returning them) drawn
    from its signature, else from the first of `configs` with such a field. `call(**values)`
    runs it (default: the API with the `context` it takes from the CLI: its console, whether to
    draw progress bars); `show` prints a result, `then` may still exit non-zero."""

    name: str
    api: str
    doc: str
    options: Options | Callable[[], Options]
    configs: tuple[str, ...] = ()
    show: Callable[[Any], None] = lambda result: None
    call: Callable[..., Any] | None = None
    then: Callable[[Any], None] | None = None
    context: tuple[str, ...] = ("console",)
    as_json: bool = True

    def __post_init__(self) -> None:
        self.__doc__, self.__annotations__ = self.doc, {}  # what typer reads of a function

    @functools.cached_property
    def __signature__(self) -> inspect.Signature:  # typer builds the options from this
        if RUNNING is not None and self.name != RUNNING:
            return inspect.Signature([])
        options = self.options() if callable(self.options) else self.options
        params = [self._parameter(key, spec if isinstance(spec, Opt) else Opt(spec))
                  for key, spec in options.items()]
        if self.as_json:
            params.append(inspect.Parameter(
                "as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                default=typer.Option(False, "--json", help="Print one JSON summary as the last "
                                     "stdout line.")))
        # An unset option that is no parameter of the API is left out, so the default of the
        # config (or of the stage that fills it) applies.
        self.unset_dropped = set(options) - set(inspect.signature(find(self.api)).parameters)
        return inspect.Signature(params)

    def __call__(self, **values: Any) -> None:
        as_json = values.pop("as_json", False)
        values = {k: v for k, v in values.items() if v is not None or k not in self.unset_dropped}
        given = {"console": err_console, "progress": sys.stderr.isatty()}
        values.update({k: given[k] for k in self.context if values.get(k) is None})
        result = run_verb(lambda: (self.call or find(self.api))(**values), as_json, self.show)
        if self.then is not None:
            self.then(result)

    def _parameter(self, key: str, spec: Opt) -> inspect.Parameter:
        found = inspect.signature(find(self.api)).parameters.get(key)
        fields = [f for ref in self.configs for f in dataclasses.fields(find(ref))
                  if f.name == key]
        field = fields[0] if fields else None  # a plain field (no setting) borrows a later help
        annotation, default = "", None  # an option of the CLI's own: its Opt says the rest
        if found is not None and found.kind != found.VAR_KEYWORD:
            annotation, default = found.annotation, found.default
        elif field is not None:
            annotation, default = field.type, field.default
        if spec.default is not inspect.Parameter.empty:
            default = spec.default
        if isinstance(default, tuple):  # a list the command line takes comma-separated
            default = ",".join(map(str, default))
        cli_type = spec.type or _cli_type(str(annotation), key)
        text = (spec.help or next((f.metadata["help"] for f in fields if "help" in f.metadata),
                                  None) or COMMON_HELP.get(key))
        required = ... if default is inspect.Parameter.empty else default
        info = (typer.Argument(required, help=text) if spec.argument else
                typer.Option(required, *([spec.flag] if spec.flag else []), help=text,
                             rich_help_panel=spec.panel))
        return inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=info,
                                 annotation=cli_type | None if default is None else cli_type)


def verb(name: str, api: str, doc: str, options: Options | Callable[[], Options],
         **how: Any) -> None:
    """Register the command `name`; `how` holds the rest of Command's fields."""
    app.command(name)(Command(name, api, doc, options, **how))


def verb_of(function: str) -> str | None:
    """The verb whose API function is `function` (list_models -> models), or None."""
    return next((info.name for info in app.registered_commands
                 if isinstance(info.callback, Command)
                 and info.callback.api.rsplit(":", 1)[-1] == function), None)


def _cli_type(annotation: str, key: str) -> Any:
    kinds = [part.strip() for part in annotation.split("|") if part.strip() != "None"]
    if len(kinds) == 1 and kinds[0] in SIMPLE_TYPES:
        return SIMPLE_TYPES[kinds[0]]
    if key in NAMED_TYPES:
        return NAMED_TYPES[key]
    if any(kind in ("Path", "os.PathLike") for kind in kinds):  # str | PathLike is a path
        return Path
    raise KeyError(f"{key}: {annotation}; give the option an Opt(type=...)")


def run_verb(call: Callable[[], Any], as_json: bool, show: Callable[[Any], None]) -> Any:
    """Run an API call; turn user errors into one clear line and a non-zero exit."""
    try:
        result = call()
    except LeanvisionError as exc:
        message = as_flags(str(exc), verb_of)  # the API's argument names, as this CLI's flags
        err_console.print(f"[bold red]{type(exc).__name__}:[/bold red] {message}",
                          highlight=False)
        if as_json:
            print(json.dumps({"ok": False, "error": message, "kind": type(exc).__name__,
                              **getattr(exc, "details", {})}))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted; a training run continues with --resume RUN_FOLDER")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: say so plainly, keep the traceback one variable away
        if os.environ.get("LEANVISION_DEBUG"):
            traceback.print_exc()
        err_console.print(f"[bold red]internal error[/bold red] {type(exc).__name__}: {exc}\n"
                          "This is a leanvision bug; set LEANVISION_DEBUG=1 for the traceback.",
                          highlight=False)
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), "kind": "InternalError"}))
        raise typer.Exit(1) from None
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 speaks for the job
        return result
    if as_json:
        print(json.dumps({"ok": True, **(result if isinstance(result, dict)
                                          else {"results": result})}, default=str))
    else:
        show(result)
    return result
