"""Typed settings: dataclasses whose fields are CLI flags and TOML keys. One builder for the
generate, evaluate and train commands (and the Python API, which passes the same fields).

- A field is `setting(default, help, identity=..., choices=...)`. `identity=True` marks the
  fields that decide the numbers a command writes; a resume must repeat them.
- `--config FILE.toml` gives fields by name (underscores); flags override it.
- Every problem is a ConfigError with one line; the CLIs print it and exit with status 2.

(pydantic's TypeAdapter was tried on these dataclasses: its errors span several lines with
a URL each, and its lax mode takes "7" for an int, so both would need rewriting; the builder
below stays shorter than that wrapping would be.)
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad flag, TOML key or value; its message is one line saying how to fix it."""


def setting(default, help: str, *, identity: bool = False, choices=None,
            ge: float | None = None, gt: float | None = None, lt: float | None = None):
    """A settings field: its default, its help line, whether it decides the numbers, and the
    range its value must lie in (checked by `typed`, with the flag's name in the message)."""
    meta = {"help": help, "identity": identity, "choices": choices,
            "range": (ge, gt, lt) if (ge, gt, lt) != (None, None, None) else None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def check(checks: list[tuple[bool, str]], error: type[Exception] = ConfigError) -> None:
    """Raise `error` with the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise error(message)


def _check_range(name: str, value, bounds) -> None:
    ge, gt, lt = bounds
    if value is None:
        return
    low = f"[{ge:g}" if ge is not None else f"({gt:g}" if gt is not None else None
    if low and lt is not None:
        ok, want = ((value >= ge) if ge is not None else (value > gt)) and value < lt, \
            f"in {low}, {lt:g})"
    elif ge is not None:
        ok, want = value >= ge, f">= {ge:g}"
    elif gt is not None:
        ok, want = value > gt, f"> {gt:g}"
    else:
        ok, want = value < lt, f"< {lt:g}"
    if not ok:
        raise ConfigError(f"{flag(name)} must be {want} (got {value})")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def identity_of(settings) -> dict[str, Any]:
    """The fields marked identity=True, by name."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if f.metadata.get("identity")}


def _kind(cls, f: dataclasses.Field) -> type:
    """bool, int, float, str, or list (of str), from the field's annotation."""
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base = typing.get_origin(hint) or hint
    return base if base in (bool, int, float, list) else str


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def add_flags(parser: argparse.ArgumentParser, cls, names: Sequence[str] | None = None) -> None:
    """`--flag` for each field of `cls` in `names` (all when None), its default in the help.

    Defaults are SUPPRESSed in the parsed namespace, so only flags given on the command line
    appear there (and override a TOML file).
    """
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        kind = _kind(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, dest=f.name,
                                      help=f"{f.metadata['help']} (default: {default})")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs["action"] = "append"
        else:
            kwargs["type"] = kind
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag(f.name), **kwargs)


def build_parser(cls, prog: str, description: str | None = None) -> ArgParser:
    parser = ArgParser(prog=prog, description=description)
    parser.add_argument("--config", default=None,
                        help="TOML file of fields (keys = flag names with underscores); "
                             "flags override it")
    add_flags(parser, cls)
    return parser


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def typed(cls: type[T], values: dict[str, Any], source: str = "configuration") -> T:
    """An instance of `cls` from field values, each checked against its type; unknown names
    and wrong types are ConfigErrors. `validate()` runs when the class has one."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown key {key!r} in {source}")
        kind = _kind(cls, fields[key])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif kind is list and isinstance(value, (str, Path)):
            value = [str(value)]
        elif kind is list and isinstance(value, (list, tuple)):
            value = [str(v) for v in value]
        ok = value is None or (isinstance(value, kind)
                               and not (kind is int and isinstance(value, bool)))
        if not ok:
            raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
        out[key] = value
    settings = cls(**out)
    for f in dataclasses.fields(cls):
        value, choices = getattr(settings, f.name), f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{flag(f.name)} must be one of {', '.join(choices)} "
                              f"(got {value!r})")
        if f.metadata.get("range"):
            _check_range(f.name, value, f.metadata["range"])
    if hasattr(settings, "validate"):
        settings.validate()
    return settings


def from_flags(cls: type[T], flags: dict[str, Any]) -> T:
    """A validated `cls` from parsed flags: those given, over the `config` TOML file if any."""
    flags = dict(flags)
    config_path = flags.pop("config", None)
    values = load_toml(config_path) if config_path else {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown key {key!r} in {config_path}")
    values.update(flags)
    if hasattr(cls, "command_line_wins"):
        cls.command_line_wins(values, flags)
    return typed(cls, values)


def parse(cls: type[T], argv: Sequence[str] | None, prog: str,
          description: str | None = None) -> T:
    """Flags over an optional `--config FILE.toml`, as a validated `cls`."""
    return from_flags(cls, vars(build_parser(cls, prog, description).parse_args(argv)))
