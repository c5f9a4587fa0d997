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
import difflib
import math
import sys
import tomllib
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Sequence, TypeVar

from cejobs.errors import ConfigError

T = TypeVar("T")


def setting(default, help: str, *, identity: bool = False, choices=None,
            ge: float | None = None, gt: float | None = None, lt: float | None = None,
            le: float | None = None):
    """A settings field: its default, its help line, whether it decides the numbers, and the
    range its value must lie in (checked by `typed`, with the flag's name in the message).
    Every int must also fit in int64 and every float be finite (`_check_value`)."""
    bounds = (ge, gt, lt, le)
    meta = {"help": help, "identity": identity, "choices": choices,
            "range": bounds if bounds != (None, None, None, None) else None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def check(checks: list[tuple[bool, str]], error: type[Exception] = ConfigError) -> None:
    """Raise `error` with the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise error(message)


INT64 = (-2**63, 2**63)  # every int flag fits in int64 (torch, numpy, zarr)


def _check_value(name: str, value, bounds) -> None:
    """The field's range (`setting`), and int64 / finiteness for every number."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{flag(name)} must be a finite number (got {value})")
    if bounds is None:
        if isinstance(value, int) and not INT64[0] <= value < INT64[1]:
            raise ConfigError(f"{flag(name)} is out of range (got {value}; at most 2^63 - 1)")
        return
    ge, gt, lt, le = bounds
    low = ((f"[{ge:g}", value >= ge) if ge is not None else
           (f"({gt:g}", value > gt) if gt is not None else (None, True))
    high = ((f"{lt:g})", value < lt) if lt is not None else
            (f"{le:g}]", value <= le) if le is not None else (None, True))
    if low[1] and high[1]:
        if isinstance(value, int) and not INT64[0] <= value < INT64[1]:
            raise ConfigError(f"{flag(name)} is out of range (got {value}; at most 2^63 - 1)")
        return
    if low[0] and high[0]:
        want = f"in {low[0]}, {high[0]}"
    elif low[0]:
        want = f">= {ge:g}" if ge is not None else f"> {gt:g}"
    else:
        want = f"< {lt:g}" if lt is not None else f"<= {le:g}"
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


def invoked_as(module: str) -> str:
    """The program name for usage lines: the console script's name when run as one
    (`cejobs-generate`), else `python -m <module>`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("cejobs-") else f"python -m {module}"


def _flags_of(parser: argparse.ArgumentParser) -> list[str]:
    """Every long flag of a parser and of its sub-commands."""
    flags = []
    for action in parser._actions:
        flags += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags += _flags_of(sub)
    return flags


def unknown_flags_message(unknown: Iterable[str], known: Sequence[str]) -> str:
    """"unknown flag --sorces (did you mean --sources?)" for each unknown flag; values that
    followed them are left out."""
    parts = []
    for arg in unknown:
        if not arg.startswith("-") or arg in ("-", "--"):
            continue
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        parts.append(f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(parts) or f"unexpected argument(s): {' '.join(unknown)}"


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2. A flag must be written in
    full (no prefix abbreviations: `--step` is not `--steps`); an unknown one gets the closest
    known flag as a suggestion."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        known = _flags_of(self)
        given = args[:args.index("--")] if "--" in args else args
        unknown = [a for a in given if a.startswith("--") and a.split("=", 1)[0] not in known]
        if unknown:  # before argparse's own checks, which would name a missing flag instead
            self.error(unknown_flags_message(unknown, known))
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(unknown_flags_message(extra, known))
        return parsed

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def help_line(text: str, default) -> str:
    """A flag's help with its default said once: the text's own `(default: ...)` when it has
    one (a default that depends on other flags), else the value; "unset" for None, whose
    meaning the text gives."""
    if "(default:" in text:
        return text
    shown = "unset" if default is None else "none" if default == [] else default
    return f"{text} (default: {shown})"


def add_flags(parser: argparse.ArgumentParser, cls, names: Sequence[str] | None = None) -> None:
    """`--flag` for each field of `cls` in `names` (all when None), its default in the help.
    `cls.FLAG_GROUPS` (heading -> field names), when there, lists the flags under headings in
    `--help`, in its order; fields in no group are listed first.

    Defaults are SUPPRESSed in the parsed namespace, so only flags given on the command line
    appear there (and override a TOML file).
    """
    table = getattr(cls, "FLAG_GROUPS", {})
    headings = {heading: parser.add_argument_group(heading) for heading in table}
    group_of = {name: headings[heading] for heading, names in table.items() for name in names}
    for f in dataclasses.fields(cls):
        if names is not None and f.name not in names:
            continue
        kind = _kind(cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, dest=f.name,
                                      help=help_line(f.metadata["help"], default))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:
            kwargs["action"] = "append"
        else:
            kwargs["type"] = kind
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        group_of.get(f.name, parser).add_argument(flag(f.name), **kwargs)


CONFIG_HELP = "TOML file of fields (keys = flag names with underscores); flags override it"


def build_parser(cls, prog: str, description: str | None = None) -> ArgParser:
    parser = ArgParser(prog=prog, description=description,
                       usage="%(prog)s [-h] [--config FILE.toml] [--FLAG VALUE ...]")
    parser.add_argument("--config", default=None, metavar="FILE.toml", help=CONFIG_HELP)
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
        _check_value(f.name, value, f.metadata.get("range"))
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
