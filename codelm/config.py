"""One config system for every command: dataclasses, a file (TOML/JSON/YAML) and `--key value` overrides.

Each command's options are a dataclass (`data prepare`, `train`, `sample`, `infill`, `eval`, `serve`, ...) whose
fields carry their help text and command-line shape (`option(default, help, flag=..., choices=..., ...)`), so each
default lives in one place. `add_dataclass_arguments` turns the fields into argparse flags (so `--help` lists them
all), and `resolve_config` layers them: dataclass defaults < config file (`--config FILE`) < command-line flags.
Nested dataclass fields are reached with dots (`--model.n_layer 4`, or a `[model]` table in the file). The resolved
config is saved next to every output (`save_config`) so a run can always be reproduced from its directory.

A new option is one new field: its flag, help line, config-file key and saved value all follow from it.
This module stays free of torch: building the command line imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from codelm.atomic import atomic_write_text
from codelm.errors import ConfigError

UNSET = _UNSET = object()  # marks a flag the user did not give


BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
              "off": False}


def option(default, help: str, *, flag: str | None = None, choices=None, positional: bool = False,
           repeat: bool = False, metavar: str | None = None, hidden: bool = False, cli: bool = True):
    """A dataclass field with its command-line shape.

    flag: the flag when it is not `--field-name` (`-k`, `--set`); choices: the allowed values (checked for config
    files too); positional: an argument without a flag (CHECKPOINT); repeat: a list field given by repeating the flag
    (`--stop A --stop B`); hidden: accepted but not listed in --help; cli=False: config file only.
    A bool field is `--name` (true), `--name false`, or `--no-name`.
    """
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "positional": positional,
            "repeat": repeat, "metavar": metavar, "hidden": hidden, "cli": cli}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp):
    """Optional[X] / X | None -> X."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def coerce(value: Any, tp, name: str):
    """Convert a string (from the command line or a file) to a field's type, with a clear error."""
    tp = _base_type(tp)
    if value is None:
        return None
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            return BOOL_WORDS[str(value).lower()]
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
        if typing.get_origin(tp) is list or tp is list:
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            return list(value)
        if typing.get_origin(tp) is dict or tp is dict:
            return json.loads(value) if isinstance(value, str) else dict(value)
    except (TypeError, ValueError, KeyError, json.JSONDecodeError):
        pass
    else:
        return value
    tname = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"bad value for --{name}: {value!r} is not a valid {tname}")


def _fields(cls) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2 (no usage dump), and a bool option's value may be
    left out (`--resume` means `--resume true`)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        bools = {flag for action in self._actions if isinstance(action, _BoolOption) for flag in action.option_strings}
        return super().parse_known_args(_explicit_bools(args, bools) if bools else args, namespace)


class _BoolOption(argparse._StoreAction):
    """A bool field's flag (marked so that ArgumentParser can let its value be left out)."""


class _Append(argparse.Action):
    """`--stop A --stop B` -> [A, B], starting from an empty list rather than the UNSET default."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest, UNSET)
        setattr(namespace, self.dest, (list(items) if items is not UNSET else []) + [values])


def _explicit_bools(args: list[str], bools: set[str]) -> list[str]:
    """`--plus MODEL` -> `--plus true MODEL`: argparse alone would take MODEL as the flag's value."""
    out = []
    for i, arg in enumerate(args):
        if arg == "--":
            return out + args[i:]
        out.append(arg)
        if arg in bools and (i + 1 == len(args) or args[i + 1].lower() not in BOOL_WORDS):
            out.append("true")
    return out


def field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "", exclude=()) -> None:
    """One argument per field (`--lr`, `--model.n_layer`, a positional CHECKPOINT); defaults are UNSET so we know
    what the user gave. Fields named in `exclude` are left out (options of another variant of the command)."""
    for name, f in _fields(cls).items():
        key = prefix + name
        if dataclasses.is_dataclass(f.type):
            add_dataclass_arguments(parser, f.type, key + ".", exclude)
            continue
        meta = f.metadata
        if meta.get("cli") is False or name in exclude:
            continue
        default = field_default(f)
        base = _base_type(f.type)
        help_text = argparse.SUPPRESS if meta.get("hidden") else meta.get("help", "")
        if meta.get("positional"):
            parser.add_argument(key, nargs="?", default=UNSET, metavar=meta.get("metavar") or key.upper(),
                                help=help_text)
            continue
        flag = meta.get("flag") or "--" + key.replace("_", "-")
        kw = dict(dest=key, default=UNSET)
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
            kw["metavar"] = meta.get("metavar") or "{" + ",".join(map(str, meta["choices"])) + "}"
        else:
            kw["metavar"] = meta.get("metavar") or (base.__name__.upper() if isinstance(base, type) else "VALUE")
        if meta.get("repeat"):
            kw["action"] = _Append
        elif base is bool:
            kw["action"] = _BoolOption
        if help_text is not argparse.SUPPRESS and meta.get("help") is not None:
            shown = str(default).lower() if base is bool else (
                ",".join(map(str, default)) if isinstance(default, list) else default)
            help_text = f"{help_text} (default: {shown})" if default not in (None, "", [], {}) or base is bool \
                else help_text
        parser.add_argument(flag, help=help_text, **kw)
        if base is bool and flag.startswith("--"):  # `--resume` alone means true (see ArgumentParser)
            parser.add_argument("--no-" + flag[2:], dest=key, action="store_const", const=False, default=UNSET,
                                help=argparse.SUPPRESS)
        if "_" in key and not meta.get("flag"):  # --fim_rate works too (config files' spelling), hidden from --help
            parser.add_argument("--" + key, help=argparse.SUPPRESS, **{**kw, "metavar": None})


def add_options_command(parser: argparse.ArgumentParser, cls, func, exclude=()) -> None:
    """A command whose options are the dataclass `cls`: `--config FILE`, a flag per field, and `func` to run it
    (it calls `resolve_config(args.options, args, args.config)`)."""
    parser.add_argument("--config", help="TOML/JSON/YAML file with these options (flags override it)")
    add_dataclass_arguments(parser, cls, exclude=exclude)
    parser.set_defaults(func=func, options=cls)


def read_config_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml
            return yaml.safe_load(text) or {}
        return json.loads(text)
    except Exception as e:  # each parser has its own exception type; all mean "this file is malformed"
        raise ConfigError(f"cannot parse config file {path}: {e}".splitlines()[0]) from None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("_json"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def build(cls, values: dict[str, Any], where: str = "option", prefix: str = ""):
    """Instantiate a (nested) dataclass from flat dotted keys, rejecting unknown keys with a suggestion."""
    fields = _fields(cls)
    kwargs, nested = {}, {}
    for key, value in values.items():
        head, dot, rest = key.partition(".")
        head = head.replace("-", "_")
        if head not in fields or (dot and not (dataclasses.is_dataclass(fields[head].type)
                                                 or _base_type(fields[head].type) in (dict,)
                                                 or typing.get_origin(fields[head].type) is dict)):
            known = [prefix + n for n in fields]
            hint = difflib.get_close_matches(prefix + head, known, n=1)
            raise ConfigError(f"unknown {where} {prefix + key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        if dot and not dataclasses.is_dataclass(fields[head].type):  # a free-form dict field: `--model.n_layer 4`
            kwargs.setdefault(head, {})[rest] = value
        elif dot:
            nested.setdefault(head, {})[rest] = value
        elif dataclasses.is_dataclass(fields[head].type) and isinstance(value, dict):
            nested.setdefault(head, {}).update(_flatten(value))
        else:
            kwargs[head] = coerce(value, fields[head].type, prefix + head)
            choices = fields[head].metadata.get("choices")
            if choices and kwargs[head] is not None and kwargs[head] not in choices:
                raise ConfigError(f"bad value for {prefix + head}: {value!r} is not one of {', '.join(choices)}")
    for head, sub in nested.items():
        kwargs[head] = build(fields[head].type, sub, where, prefix + head + ".")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {cls.__name__}: {e}") from None


def resolve_config(cls, args: argparse.Namespace | None = None, config_file: str | None = None,
                   overrides: dict | None = None):
    """defaults < config file < explicit command-line flags < overrides."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(_flatten(read_config_file(config_file)))
        for key in values:
            if not _is_field_key(cls, key.replace("-", "_")):
                hint = difflib.get_close_matches(key, list(_fields(cls)), n=1)
                raise ConfigError(f"{config_file}: unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint
                                                                             else ""))
    if args is not None:
        values.update({k: v for k, v in vars(args).items() if v is not _UNSET and _is_field_key(cls, k)})
    values.update(overrides or {})
    return build(cls, values, where="option" if args is not None else "config key")


def _is_field_key(cls, key: str) -> bool:
    head, dot, rest = key.partition(".")
    fields = _fields(cls)
    if head not in fields:
        return False
    if not dot:
        return True
    tp = fields[head].type
    return typing.get_origin(tp) is dict or tp is dict or (dataclasses.is_dataclass(tp) and _is_field_key(tp, rest))


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def save_config(obj_or_dict, path: str | os.PathLike) -> None:
    d = obj_or_dict if isinstance(obj_or_dict, dict) else to_dict(obj_or_dict)
    atomic_write_text(path, json.dumps(d, indent=2, sort_keys=True, default=str) + "\n")
