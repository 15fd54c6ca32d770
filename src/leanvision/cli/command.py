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
import re
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
# --data and --skip-bad-images of a verb that reads data for a trained model (eval, robustness)
DATA_TO_SCORE = "Data to score (default: the training data)."
SKIP_AS_TRAINED = "Leave out images that cannot be decoded (default: as the model's training did)."
# CLI types of parameters whose API annotation is a union that names no path type
NAMED_TYPES = {"data": str, "student": str, "text_columns": str}
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


def fields_of(*refs: str) -> Options:
    return dict.fromkeys(f.name for ref in refs for f in dataclasses.fields(find(ref)))


def keys(*names: str) -> Options:
    """Options taken as their API parameter or config field says."""
    return dict.fromkeys(names)


ARG, DIGITS = Opt(argument=True), Opt(argument=True, default="builtin:digits")
JSON = Opt("Print one JSON summary as the last stdout line.", bool, False, "--json")
RUN_ON = keys("skip_bad_images", "device", "seed")  # options of every verb that trains


@dataclasses.dataclass(eq=False)
class Command:
    """A verb: `api` ('module:function') with `options` (or a function returning them) drawn
    from its signature, else from the first of `configs` with such a field; the API is called
    with the CLI's console and whether to draw progress bars when it takes them. `show` prints
    a result: a str.format template over it, or a 'module:function' printer taking (console,
    result); `then` ('module:function') may return a failure message, which exits non-zero."""

    name: str
    api: str
    doc: str
    options: Options | Callable[[], Options]
    configs: tuple[str, ...] = ()
    show: str = ""
    then: str | None = None
    as_json: bool = True

    def __post_init__(self) -> None:
        self.__doc__, self.__annotations__ = self.doc, {}  # what typer reads of a function

    @functools.cached_property
    def __signature__(self) -> inspect.Signature:  # typer builds the options from this
        if RUNNING is not None and self.name != RUNNING:
            return inspect.Signature([])
        options = {**(self.options() if callable(self.options) else self.options),
                   **({"as_json": JSON} if self.as_json else {})}
        params = [self._parameter(key, spec if isinstance(spec, Opt) else Opt(spec))
                  for key, spec in options.items()]
        # typer's context says which options the user typed (see __call__)
        params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY,
                                        annotation=typer.Context))
        return inspect.Signature(params)

    def __call__(self, ctx: typer.Context, **values: Any) -> None:
        as_json = values.pop("as_json", False)
        api = self._api_parameters
        # An option the user did not type is left out when it is unset or no parameter of the
        # API, so the API's default (or the config's, or the stage's that fills it) applies,
        # and `train --resume` hears only what was typed.
        values = {k: v for k, v in values.items() if ctx.get_parameter_source(k).name !=
                  "DEFAULT" or (k in api and v is not None)}
        takes_any = any(p.kind == p.VAR_KEYWORD for p in api.values())
        given = {"console": err_console, "progress": sys.stderr.isatty()}
        values.update({k: v for k, v in given.items() if values.get(k) is None
                       and (k in api or (takes_any and k == "progress"))})
        result = run_verb(lambda: find(self.api)(**values), as_json, self._show)
        failure = find(self.then)(result) if self.then else None
        if failure:
            err_console.print(failure, highlight=False)
            raise typer.Exit(1)

    def _show(self, result: Any) -> None:
        if re.fullmatch(r"[\w.]+:\w+", self.show):  # 'module:function', imported with the API
            find(self.show)(out_console, result)
        elif self.show:
            out_console.print(self.show.format(**result), highlight=False)

    @functools.cached_property
    def _api_parameters(self) -> Any:  # the signature is read once, not once per option
        return inspect.signature(find(self.api)).parameters

    def _parameter(self, key: str, spec: Opt) -> inspect.Parameter:
        found = self._api_parameters.get(key)
        fields = [f for ref in self.configs for f in dataclasses.fields(find(ref))
                  if f.name == key]
        annotation, default = "", None  # an option of the CLI's own: its Opt says the rest
        if found is not None and found.kind != found.VAR_KEYWORD:
            annotation, default = found.annotation, found.default
        elif fields:  # the first config's field; a plain one (no setting) borrows a later help
            annotation, default = fields[0].type, fields[0].default
        default = default if spec.default is inspect.Parameter.empty else spec.default
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
    if key in NAMED_TYPES or "Path" not in annotation:  # str | Path | Artifact: a path
        return NAMED_TYPES[key]  # a KeyError here: give the option an Opt(type=...)
    return list[Path] if "list[" in annotation or "Sequence[" in annotation else Path


def run_verb(call: Callable[[], Any], as_json: bool, show: Callable[[Any], None]) -> Any:
    """Run an API call; turn user errors into one clear line and a non-zero exit."""
    try:
        result = call()
    except LeanvisionError as exc:
        message = as_flags(str(exc), verb_of)  # the API's argument names, as this CLI's flags
        err_console.print(f"[bold red]{type(exc).__name__}:[/bold red] {message}", highlight=False)
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
