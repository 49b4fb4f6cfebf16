"""The CLI's machinery: one-line usage errors, finite floats, and flags generated from a config.

`OneLineGroup` is the Typer group class: every usage error (bad value, missing argument) is
one `error: ...` line on stderr and exit code 1, under `typer.testing.CliRunner` as in the
installed command; flags show no `<bool>` placeholder in `--help`.

`config_command(load, ...)` makes a command class whose options for a frozen config dataclass
are generated from its fields when the command is first parsed or shown, not when the CLI
starts: `--version` must not import the config's module (numpy). One flag per field, named
`--<prefix><field-name>`, typed by the annotation (int, float: finite only, str, bool:
`--x/--no-x`, Literal: a choice, tuple[X, ...]: comma-separated X), help from the field's docstring, default None (= keep the
preset's value). The command reads the values back with `config_overrides()`. So a new field
in `NeuroMaskConfig` is a new flag with no edit here or in cli.py.

`finite_float` is the parser of every float flag: NaN and infinities are refused.
`one_line_errors` is the one place that turns a library error into one line and exit code 1.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import itertools
import math
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from typer.core import TyperCommand, TyperGroup

from .errors import NeuromaskError

_META = "neuromask.config_flags"


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """The one place that turns library errors into a message and exit code 1."""
    try:
        yield
    except NeuromaskError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(code=1) from None


def finite_float(text: str) -> float:
    """Parser of every float flag: a number, not NaN or infinite."""
    try:
        value = float(text)
    except ValueError:
        msg = f"{text!r} is not a number"
        raise typer.BadParameter(msg) from None
    if not math.isfinite(value):
        msg = f"{text!r} is not a finite number"
        raise typer.BadParameter(msg)
    return value


def _quiet_flags(params: Sequence[Any]) -> None:
    """Typer renders flags as `--force <bool>`; a flag takes no value, so show none."""
    for p in params:
        if getattr(p, "is_flag", False) and getattr(p, "metavar", None) is None:
            p.metavar = ""


class _FlagHelp:
    """Mixin for commands and groups: no placeholder after flags in `--help`."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        _quiet_flags(params)
        return params


class OneLineCommand(_FlagHelp, TyperCommand):
    """A command with quiet flags in its help."""


class OneLineGroup(_FlagHelp, TyperGroup):
    """The root group: usage errors become one line, exit code 1 (a bare `neuromask` shows
    the help, exit code 0)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             windows_expand_args: bool = True, **extra: Any) -> Any:
        try:  # typer >= 0.2x vendors click; older typer uses the click package
            from typer._click.exceptions import ClickException
        except ImportError:  # pragma: no cover
            from click.exceptions import ClickException  # type: ignore[import-not-found,no-redef,assignment,unused-ignore]

        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args,
                                **extra)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help())
                code = 0
            else:
                text = " ".join(str(exc.format_message()).split())
                typer.echo(f"error: {text} (see `neuromask --help`)", err=True)
                code = 1
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 130
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


# --------------------------------------------------------------------------- config flags


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and its bases), first sentence only."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in itertools.pairwise(body):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _choices(tp: Any) -> tuple[Any, ...] | None:
    return get_args(tp) if get_origin(tp) is Literal else None


def _list_parser(name: str, item: Any) -> Callable[[str], tuple[Any, ...]]:
    """Parser of a tuple field's flag: comma-separated items, each checked like a flag."""
    choices = _choices(item)
    if choices is None and item not in (int, float, str):
        msg = f"config field {name!r} holds {item!r} items, which have no CLI flag form"
        raise TypeError(msg)

    def parse(text: str) -> tuple[Any, ...]:
        parts = [t.strip() for t in text.split(",") if t.strip()]
        if not parts:
            msg = f"{text!r} holds no values; give comma-separated values"
            raise typer.BadParameter(msg)
        if choices is not None:
            bad = [t for t in parts if t not in choices]
            if bad:
                msg = f"{bad[0]!r} is not one of {', '.join(map(str, choices))}"
                raise typer.BadParameter(msg)
            return tuple(parts)
        if item is float:
            return tuple(finite_float(t) for t in parts)
        if item is int:
            try:
                return tuple(int(t) for t in parts)
            except ValueError:
                msg = f"{text!r} is not a list of integers"
                raise typer.BadParameter(msg) from None
        return tuple(parts)

    return parse


def _option_type(name: str, tp: Any) -> tuple[Any, dict[str, Any]]:
    """(annotation, extra typer.Option arguments) for a field's type."""
    if get_origin(tp) in (typing.Union, types.UnionType):  # X | None: X (None = the preset's)
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _option_type(name, args[0])
    if get_origin(tp) is tuple:  # tuple[X, ...]: comma-separated values
        items = get_args(tp)
        if len(items) == 2 and items[1] is Ellipsis:
            return (str, {"parser": _list_parser(name, items[0]), "metavar": "<a,b,...>"})
    choices = _choices(tp)
    if choices is not None:
        if not all(isinstance(c, str) for c in choices):
            return (type(choices[0]), {})
        enum = Enum(f"{name}_choice", {c: c for c in choices}, type=str)  # type: ignore[misc]
        return (enum, {})
    if tp is bool:
        return (bool, {})
    if tp is int:
        return (int, {})
    if tp is float:
        return (float, {"parser": finite_float, "metavar": "<float>"})
    if tp is str:
        return (str, {})
    msg = (f"config field {name!r} has type {tp!r}, which has no CLI flag form; use int, "
           "float, str, bool or a Literal of strings")
    raise TypeError(msg)


def config_parameters(cls: type, *, prefix: str = "", panel: str | None = None,
                      aliases: Mapping[str, Sequence[str]] | None = None,
                      skip: Sequence[str] = ()) -> list[inspect.Parameter]:
    """One keyword parameter (typer `Annotated` option, default None) per dataclass field."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    aliases = aliases or {}
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        annotation, extra = _option_type(f.name, hints[f.name])
        dash = f.name.replace("_", "-")
        names = [f"--{prefix}{dash}/--no-{prefix}{dash}" if annotation is bool
                 else f"--{prefix}{dash}", *aliases.get(f.name, ())]
        opt = typer.Option(*names, help=docs.get(f.name, ""), rich_help_panel=panel,
                           show_default=False,
                           **extra)
        out.append(inspect.Parameter(f"{prefix.replace('-', '_')}{f.name}",
                                     inspect.Parameter.KEYWORD_ONLY,
                                     default=None,
                                     annotation=Annotated[annotation | None, opt]))
    return out


def _click_params(parameters: list[inspect.Parameter]) -> list[Any]:
    """Turn signature parameters into click parameters through Typer itself."""
    def spec(**kwargs: Any) -> None: ...

    spec.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    tmp = typer.Typer(add_completion=False)
    tmp.command()(spec)
    return list(typer.main.get_command(tmp).params)


def config_command(load: Callable[[], type], *, prefix: str = "", panel: str | None = None,
                   aliases: Mapping[str, Sequence[str]] | None = None,
                   skip: Sequence[str] = ()) -> type[TyperCommand]:
    """A command class with one option per field of the dataclass `load()` returns.

    The options are built on first use of `params` (parsing, help), so importing the CLI
    does not import the config's module. `config_overrides()` returns their values by field.
    """

    class ConfigCommand(OneLineCommand):
        _all: list[Any] | None = None  # one list object: click appends to and pops from it

        @property
        def params(self) -> list[Any]:
            if self._all is None:
                generated = _click_params(config_parameters(
                    load(), prefix=prefix, panel=panel, aliases=aliases, skip=skip))
                cut = len(prefix.replace("-", "_"))
                self._fields = {p.name: p.name[cut:] for p in generated}
                self._all = [*self._base, *generated]
            return self._all

        @params.setter
        def params(self, value: list[Any]) -> None:
            self._base = list(value)
            self._all = None

        def invoke(self, ctx: Any) -> Any:
            _ = self.params
            ctx.meta[_META] = {field: ctx.params.pop(name) for name, field in
                               self._fields.items() if name in ctx.params}
            return super().invoke(ctx)

    return ConfigCommand


def config_overrides(ctx: typer.Context) -> dict[str, Any]:
    """The generated config flags the user gave, by field name (enum choices as strings)."""
    raw: dict[str, Any] = dict(ctx.meta.get(_META, {}))
    return {k: getattr(v, "value", v) for k, v in raw.items() if v is not None}
