"""Loading a config: YAML files plus dotted `key=value` overrides, with one-line errors; the
resolved YAML a run records; `explain`.

Owns: `build_config`, `load_config`, `load_yaml`, `parse_override`, `to_yaml` and `explain`.
"""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sftrl import yamlio
from sftrl.config.base import ConfigError
from sftrl.config.schema import Config


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config class found by walking `loc` (field names and list indices) from `model`."""
    cur: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            continue
        if part not in cur.model_fields:
            return None
        cur = _inner_model(cur.model_fields[part].annotation)
        if cur is None:
            return None
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _inner_model(ann) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _one_line(err: ValidationError, root: type[BaseModel]) -> str:
    e = err.errors()[0]
    loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    key = ".".join(str(x) for x in loc) or "<root>"
    if e["type"] == "extra_forbidden":
        owner = _model_at(root, loc[:-1])
        names = list(owner.model_fields) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr('.'.join(map(str, loc[:-1] + (c,)))) for c in close)}?" \
            if close else f"known keys here: {', '.join(names)}"
        return f"unknown config key {key!r}; {hint}"
    msg = e["msg"].removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    got = f" (got {e['input']!r})" if e["type"] not in ("value_error", "key_error") and \
        not isinstance(e.get("input"), dict) else ""
    return f"config key {key!r}: {msg}{got}{more}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b.c=value' and parse the value as YAML (numbers, lists, null, strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. sft.optim.lr=3e-4)")
    key, value = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write e.g. sft.optim.lr=3e-4")
    try:
        parsed = yamlio.load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def _set_path(tree: dict, path: list[str], value: Any, text: str, defaults: Any) -> None:
    """Set `value` at dotted `path` in the user's tree. Only what the user wrote is in the tree
    (so presets can fill the rest); a list index into a list the user did not write starts
    from a copy of the default list."""
    cur: Any = tree
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:i]) or 'list'} has "
                                  f"{len(cur)} entries; index {part!r} is out of range")
            part = int(part)
        elif not isinstance(cur, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(path[:i])} is not a section")
        defaults = _child(defaults, part)
        if last:
            cur[part] = value
            return
        nxt = cur[part] if isinstance(cur, list) else cur.get(part)
        if not isinstance(nxt, (dict, list)):
            nxt = copy.deepcopy(defaults) if isinstance(defaults, list) else {}
            cur[part] = nxt
        cur = nxt


def _child(defaults: Any, part) -> Any:
    if isinstance(defaults, dict):
        return defaults.get(part)
    if isinstance(defaults, list) and isinstance(part, int) and part < len(defaults):
        return defaults[part]
    return None


def build_config(data: dict, overrides: list[str] = (), cls: type[BaseModel] | None = None):
    """Validate `data` (a plain dict) after applying dotted overrides; one-line errors."""
    cls = cls or Config
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(data).__name__}")
    tree = copy.deepcopy(data)
    defaults = cls().model_dump(mode="python") if _has_defaults(cls) else {}
    for text in overrides:
        path, value = parse_override(text)
        _set_path(tree, path, value, text, defaults)
    try:
        return cls.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_one_line(err, cls)) from None


def _has_defaults(cls) -> bool:
    try:
        cls()
        return True
    except ValidationError:
        return False


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; give a path to a YAML file "
                          f"(ready ones are in configs/)")
    try:
        data = yamlio.load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()):
    """Load a YAML config (or the defaults when `path` is None) and apply overrides."""
    data = load_yaml(path) if path else {}
    return build_config(data, list(overrides))


def to_yaml(cfg: BaseModel) -> str:
    """The fully resolved config, every default written out, loadable by `load_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None, width=100)


def explain(cls: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows (key, type, default, meaning) for every field, nested sections expanded and the items
    of lists of sections as `key[].field`; a key that takes registered names, or a fixed set of
    values, lists them in its meaning (read from the registries now, see `config.choices`)."""
    from sftrl.config.choices import choices
    rows = _rows(cls or Config, prefix)
    names = choices()
    out = []
    for key, type_name, shown, meaning in rows:
        listed = names.get(key) or _literal_values(type_name)
        if listed:
            meaning = f"{meaning.rstrip()} Choices: {', '.join(listed)}."
        out.append((key, type_name, shown, meaning))
    return out


def _rows(cls: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, f in cls.model_fields.items():
        key = f"{prefix}{name}"
        inner = _inner_model(f.annotation)
        default = f.get_default(call_default_factory=True) if not f.is_required() else None
        type_name = _type_name(f.annotation)
        if inner is not None and isinstance(default, BaseModel):
            rows.append((key, type_name, "(section)", f.description or ""))
            rows.extend(_rows(inner, key + "."))
            continue
        shown = "(required)" if f.is_required() else \
            yaml.safe_dump(_plain(default), default_flow_style=True, width=1000).strip()
        shown = shown.removesuffix("\n...").removesuffix("...").strip()
        rows.append((key, type_name, shown, f.description or ""))
        if inner is not None:                          # a list of sections: each item's fields
            rows.extend(_rows(inner, key + "[]."))
    return rows


def _literal_values(type_name: str) -> list[str]:
    """['auto', 'bf16'] from "Literal['auto', 'bf16']" (or its Optional form)."""
    import re
    inside = re.search(r"Literal\[(.*?)\]", type_name)
    return re.findall(r"'([^']*)'", inside.group(1)) if inside else []


def _plain(v):
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _type_name(ann) -> str:
    text = str(ann) if not isinstance(ann, type) else ann.__name__
    return text.replace("typing.", "").replace("sftrl.config.rl.", "").replace("sftrl.config.schema.", "")
