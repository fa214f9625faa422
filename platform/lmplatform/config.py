"""Typed configuration: the one place where YAML files and `key=value` overrides become objects.

Every stage config is a pydantic model that forbids unknown keys. A job resolves its config as
preset (in code) -> YAML file -> `key=value` overrides, validates it once here, and from then on
passes typed objects around. Any problem becomes a single-line `ConfigError` that names the
field, the offending value and what is allowed, before any work starts.
"""

from __future__ import annotations

import copy
import io
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration problem, phrased as one line a user can act on."""


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, and field docstrings become descriptions."""

    model_config = ConfigDict(
        extra="forbid",
        # nan passes every bound check (all comparisons are false) and inf passes lower
        # bounds: neither is a usable setting anywhere in a config
        allow_inf_nan=False,
        use_attribute_docstrings=True,
        validate_assignment=True,
        protected_namespaces=(),
    )


Name = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""A run, task or model name: it becomes a path in storage and the registry."""


C = TypeVar("C", bound=BaseModel)


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into a key path and a YAML-parsed value (`256` -> int, `[1,2]` -> list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. model.hidden_size=256")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"override {text!r}: empty key; expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the literal string and let validation judge it
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `key=value` override set at its dotted path."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(
                    f"override {text!r}: {where} is a value ({child!r}), not a section"
                )
            node = child
        node[path[-1]] = value
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML keeps the last one silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: key {key!r} appears twice "
                f"(first on line {seen[key] + 1}); merge the two entries"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping; a missing file or a non-mapping top level is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.load(p.read_text(), Loader=_StrictLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"config file {str(p)!r} {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"config file {str(p)!r}{where}: not valid YAML ({e.__class__.__name__})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r}: top level must be a mapping, got {type(data).__name__}"
        )
    return data


def load_config(
    cls: type[C], path: str | os.PathLike | None = None, overrides: list[str] = ()
) -> C:
    """Resolve preset -> YAML -> overrides into a validated `cls`, or raise a one-line ConfigError.

    Presets are applied by the config classes themselves (e.g. `model.size: mini` fills every
    model field that the YAML or an override does not set), so explicit values always win.
    """
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, list(overrides))
    return validate(cls, data)


def validate(cls: type[C], data: dict) -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(cls, e)) from None


# --------------------------------------------------------------------------- error messages


def _unwrap(annotation: Any) -> Any:
    """Strip Optional/Annotated so we can look at the real type."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    ann = annotation
    if get_origin(ann) is typing.Annotated:
        ann = get_args(ann)[0]
    if get_origin(ann) in (typing.Union, types.UnionType):
        return [a for a in get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
    return []


def _tag_of(member: type[BaseModel]) -> set[str]:
    """Literal values that a discriminated-union member is selected by (e.g. family='bert')."""
    tags: set[str] = set()
    for f in member.model_fields.values():
        if get_origin(f.annotation) is Literal and len(get_args(f.annotation)) == 1:
            tags.add(str(get_args(f.annotation)[0]))
    return tags


def _describe_type(annotation: Any) -> str:
    members = _union_members(annotation)
    if members:
        tags = sorted({t for m in members for t in _tag_of(m)})
        return "a mapping selected by one of " + ", ".join(repr(t) for t in tags)
    ann = _unwrap(annotation)
    if get_origin(ann) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(ann))
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "a mapping with keys " + ", ".join(ann.model_fields)
        names = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}
        return names.get(ann, ann.__name__)
    origin = get_origin(ann)
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in get_args(ann) if a is not type(None))
    return str(ann).replace("typing.", "")


def _describe_field(field) -> str:
    parts = [_describe_type(field.annotation)]
    for m in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(m, attr, None)
            if v is not None and isinstance(m, annotated_types.BaseMetadata):
                parts.append(f", {sym} {v}")
        if isinstance(m, annotated_types.MinLen):
            parts.append(f", at least {m.min_length} item(s)")
    if _unwrap(field.annotation) is not field.annotation and type(None) in get_args(
        field.annotation
    ):
        parts.append(", or null")
    return "".join(parts)


def _walk(cls: type[BaseModel], loc: tuple) -> tuple[list[str], Any, type[BaseModel]]:
    """Follow a pydantic error location through nested models.

    Returns the user-facing dotted path (discriminator tags removed), the FieldInfo of the last
    field found (or None) and the model class that owns it.
    """
    path: list[str] = []
    field = None
    owner: type[BaseModel] = cls
    current: type[BaseModel] | None = cls
    i = 0
    while i < len(loc):
        part = loc[i]
        if current is None:
            path.append(str(part))
            i += 1
            continue
        if isinstance(part, int):
            path[-1] = f"{path[-1]}[{part}]" if path else f"[{part}]"
            i += 1
            continue
        path.append(str(part))
        owner = current
        field = current.model_fields.get(str(part))
        if field is None:
            current = None
            i += 1
            continue
        members = _union_members(field.annotation)
        nxt = None
        if members and i + 1 < len(loc):
            for m in members:
                if str(loc[i + 1]) in _tag_of(m) or str(loc[i + 1]) == m.__name__:
                    nxt = m
                    i += 1  # skip the discriminator tag in the location
                    break
        if nxt is None:
            ann = _unwrap(field.annotation)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                nxt = ann
            elif get_origin(ann) in (list, dict):
                inner = get_args(ann)[-1] if get_args(ann) else None
                inner = _unwrap(inner)
                nxt = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
                if nxt is not None and i + 1 < len(loc):
                    # list index or dict key: keep it in the path and descend into the item model
                    i += 1
                    path[-1] += f"[{loc[i]}]" if isinstance(loc[i], int) else f".{loc[i]}"
        current = nxt
        i += 1
    return path, field, owner


def format_validation_error(cls: type[BaseModel], err: ValidationError) -> str:
    """One line per problem (normally one): `field: value is not allowed: allowed values`."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path, field, owner = _walk(cls, loc)
        name = ".".join(path) or "<config>"
        kind = e["type"]
        if kind == "extra_forbidden":
            allowed = ", ".join(owner.model_fields) if field is None else ""
            lines.append(f"{name}: unknown key (allowed keys here: {allowed})")
            continue
        if kind == "missing":
            what = _describe_field(field) if field is not None else "a value"
            lines.append(f"{name}: required, expected {what}")
            continue
        value = e.get("input")
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if isinstance(value, dict):
            # a whole section failed a cross-field check: the message names the fields
            lines.append(f"{name}: {msg}")
            continue
        allowed = _describe_field(field) if field is not None and "[" not in path[-1] else ""
        shown = repr(value) if len(repr(value)) < 80 else repr(value)[:77] + "..."
        tail = f" (allowed: {allowed})" if allowed else ""
        lines.append(f"{name}={shown}: {msg}{tail}")
    return "config error: " + "; ".join(lines) if len(lines) > 1 else "config error: " + lines[0]


# --------------------------------------------------------------------------- writing


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file (local path or URI) so readers see the old content or the new, never a torn
    file."""
    from lmplatform import storage

    storage.write_text(path, text)


def to_yaml(cfg: BaseModel) -> str:
    buf = io.StringIO()
    yaml.safe_dump(cfg.model_dump(mode="json"), buf, sort_keys=False)
    return buf.getvalue()


def save_resolved(cfg: BaseModel, out_dir: str | os.PathLike, name: str = "config.yaml") -> str:
    """Write the fully resolved config next to an output (a local folder or a URI), so every
    artefact says how it was made. Returns where it went."""
    from lmplatform import storage

    path = storage.join(out_dir, name)
    storage.write_text(path, to_yaml(cfg))
    return path
