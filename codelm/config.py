"""One config system for data, train and eval: dataclasses, a file (TOML/JSON/YAML) and `--key value` overrides.

Each command's options are a dataclass whose fields carry their help text (`field(metadata={"help": ...})`).
`add_dataclass_arguments` turns the fields into argparse flags (so `--help` lists them all), and
`resolve_config` layers them: dataclass defaults < config file < command-line flags. Nested dataclass fields are
reached with dots (`--model.n_layer 4`, or a `[model]` table in the file). The resolved config is saved next to every
output (`save_config`) so a run can always be reproduced from its directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import shutil
import tempfile
import time
import types
import typing
from pathlib import Path
from typing import Any

from codelm.errors import ConfigError

UNSET = _UNSET = object()  # marks a flag the user did not give


def option(default, help: str, **kw):
    """A dataclass field with help text for the command line."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


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
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
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
    except (TypeError, ValueError, json.JSONDecodeError):
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


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One flag per field (`--lr`, `--model.n_layer`); defaults are _UNSET so we know what the user gave."""
    for name, f in _fields(cls).items():
        key = prefix + name
        if dataclasses.is_dataclass(f.type):
            add_dataclass_arguments(parser, f.type, key + ".")
            continue
        if f.metadata.get("cli") is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        metavar = _base_type(f.type).__name__.upper() if isinstance(_base_type(f.type), type) else "VALUE"
        parser.add_argument("--" + key.replace("_", "-"), dest=key, default=_UNSET, metavar=metavar,
                            help=f"{f.metadata.get('help', '')} (default: {default})")
        if "_" in key:  # --fim_rate works too (the spelling of config files), without cluttering --help
            parser.add_argument("--" + key, dest=key, default=_UNSET, help=argparse.SUPPRESS)


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same directory + fsync + rename: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; a written file should read like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_file_mode() -> int:
    """What open() would give a new file under the current umask (temp files and some writers use 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def replace_directory(tmp: Path, dest: Path) -> None:
    """Swap a fully written (and fsync'd) temp directory in for `dest`. Readers see the old or the new directory:
    an existing `dest` is first renamed aside, then removed once the new one is in place."""
    if dest.exists():
        old = dest.parent / f".old-{dest.name}-{os.getpid()}-{time.monotonic_ns()}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def save_config(obj_or_dict, path: str | os.PathLike) -> None:
    d = obj_or_dict if isinstance(obj_or_dict, dict) else to_dict(obj_or_dict)
    atomic_write_text(path, json.dumps(d, indent=2, sort_keys=True, default=str) + "\n")
