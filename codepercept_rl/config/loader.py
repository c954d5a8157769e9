"""Typed YAML configs with dotted command-line overrides, validated at start-up.

A job declares its config as nested dataclasses (see :mod:`codepercept_rl.config.schema`). A recipe YAML gives
values for some of the fields; ``key.sub=value`` overrides from the command line come after it::

    cfg = load_config("recipes/r1_tiny_cpu.yaml", ["actor.optim.lr=1e-6", "tracking.backends=[console,wandb]"],
                      schema=JobConfig)

Every problem stops the job before it starts, with one message naming the key and where it came from:
an unknown key (with a "did you mean"), a value of the wrong type, a malformed override, a missing file.
Values are parsed as YAML (``[a,b]`` is a list, ``null`` is None). Floats also accept ``1e-6`` (PyYAML reads
exponents without a dot as strings). Keys of ``dict`` fields are free-form (``reward.weights.ssim=0.5``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from codepercept_rl.errors import ConfigError

T = TypeVar("T")

__all__ = ["load_config", "from_dict", "to_dict", "parse_override", "apply_override", "dump_yaml"]


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *, schema: type[T]) -> T:
    """Read a YAML recipe, apply dotted overrides and validate the result against ``schema``.

    Args:
        path: the recipe file, or None for the schema's defaults.
        overrides: ``a.b.c=value`` strings, applied in order after the file.
        schema: the dataclass type of the job's config.

    Returns:
        An instance of ``schema`` with every field type-checked.

    Raises:
        ConfigError: naming the file, key or override that is wrong.
    """
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {_one_line(e)}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        raw = loaded
        # Catch unknown keys in the file itself before overrides, so the message names the file.
        from_dict(schema, raw, origin=origin)
    for override in overrides:
        key, value = parse_override(override)
        apply_override(raw, key, value, schema=schema, origin=f"override '{override}'")
    return from_dict(schema, raw, origin=origin if not overrides else f"{origin} + overrides")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the dotted key and its YAML-parsed value.

    Raises:
        ConfigError: the override has no ``=``, an empty key, or a value that is not valid YAML.
    """
    if "=" not in text:
        raise ConfigError(f"bad override '{text}': expected key=value, e.g. actor.optim.lr=1e-6")
    key, _, value_text = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{text}': empty key or empty segment in '{key}'")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"bad override '{text}': value is not valid YAML: {_one_line(e)}") from None
    return key, value


def apply_override(raw: dict[str, Any], key: str, value: Any, *, schema: type, origin: str) -> None:
    """Set ``raw[k1][k2]... = value`` after checking every segment of ``key`` exists in ``schema``."""
    parts = key.split(".")
    node = raw
    tp: Any = schema
    for i, part in enumerate(parts):
        tp = _strip_optional(tp)
        dotted = ".".join(parts[: i + 1])
        if dataclasses.is_dataclass(tp):
            names = {f.name: f for f in dataclasses.fields(tp)}
            if part not in names:
                hint = _KEY_HINTS.get(key)
                hint = f" (did you mean '{hint}'?)" if hint else _did_you_mean(part, names)
                raise ConfigError(f"unknown key '{dotted}' in {origin}{hint}")
            tp = _resolved_hints(tp)[part]
        elif get_origin(tp) in (dict, Mapping) or tp is dict:
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            raise ConfigError(
                f"'{'.'.join(parts[:i])}' is a {_type_name(tp)}, it has no key '{part}' ({origin})"
            )
        if i == len(parts) - 1:
            _check(tp, value, key=dotted, origin=origin)  # report a wrong type against the override itself
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def from_dict(
    schema: type[T], data: Mapping[str, Any] | None, *, origin: str = "config", _prefix: str = ""
) -> T:
    """Build ``schema`` from a nested mapping, type-checking every value.

    Raises:
        ConfigError: an unknown key or a value of the wrong type, naming the dotted key and ``origin``.
    """
    data = dict(data or {})
    hints = _resolved_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key '{_prefix}{key}' in {origin}{_did_you_mean(str(key), fields)}")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _check(hints[name], data[name], key=f"{_prefix}{name}", origin=origin)
    return schema(**kwargs)


def to_dict(cfg: Any) -> Any:
    """A config dataclass as plain nested dicts/lists (for YAML dumps, W&B and JSON)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text, in field order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------------------------------------------
# type checking


def _check(tp: Any, value: Any, *, key: str, origin: str) -> Any:
    if tp is Any:
        return value
    origin_tp = get_origin(tp)
    if origin_tp in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, key=key, origin=origin)
            except ConfigError as e:
                errors.append(e)
        raise _type_error(key, tp, value, origin)
    if origin_tp is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"bad value for '{key}' in {origin}: {value!r} is not one of {', '.join(map(repr, choices))}"
            )
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value, origin)
        return from_dict(tp, value, origin=origin, _prefix=f"{key}.")
    if origin_tp in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, tp, value, origin)
        (item_tp,) = get_args(tp)[:1] or (Any,)
        items = [_check(item_tp, v, key=f"{key}[{i}]", origin=origin) for i, v in enumerate(value)]
        return tuple(items) if origin_tp is tuple or tp is tuple else items
    if origin_tp in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value, origin)
        args = get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _check(val_tp, v, key=f"{key}.{k}", origin=origin) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value, origin)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value, origin)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads "1e-6" (no dot) as a string; accept anything float() parses fully.
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value, origin)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value, origin)
    raise TypeError(f"config schema field '{key}' has an unsupported type {tp!r}")


def _type_error(key: str, tp: Any, value: Any, origin: str) -> ConfigError:
    return ConfigError(
        f"wrong type for '{key}' in {origin}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping (section)"
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, get_args(tp)))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


_HINTS_CACHE: dict[type, dict[str, Any]] = {}

# Names users bring from verl or other trainers, pointed at ours.
_KEY_HINTS = {
    "trainer.lr": "actor.optim.lr",
    "trainer.logger": "tracking.backends",
    "algorithm.kl_ctrl.kl_coef": "algorithm.kl_coef",
    "actor.ppo_micro_batch_size_per_gpu": "actor.ppo_micro_batch_size_per_device",
    "actor.optim.lr_warmup_ratio": "actor.optim.lr_warmup_steps_ratio",
}


def _resolved_hints(schema: type) -> dict[str, Any]:
    # `from __future__ import annotations` makes field types strings; resolve them once per class.
    if schema not in _HINTS_CACHE:
        _HINTS_CACHE[schema] = typing.get_type_hints(schema)
    return _HINTS_CACHE[schema]


def _did_you_mean(name: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(choices))})"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
