"""The config's keys as a user sees them: dotted name, default and meaning, read from the typed
config itself (so `--help` and `stvideo config show` can never drift from what is validated)."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel

from jobs.config import PipelineConfig
from jobs.lineage import flatten


@dataclass(frozen=True)
class ConfigKey:
    name: str  # dotted, as `--set` takes it
    default: Any
    meaning: str  # the field's description, or "" where it has none


def _fields(model: type) -> dict[str, Any]:
    """A pydantic model's or pydantic dataclass's fields: name -> FieldInfo."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return dict(model.model_fields)
    return dict(getattr(model, "__pydantic_fields__", {}))


def _nested_model(annotation: Any) -> type | None:
    """The model class a field holds, if it holds one (plain or optional)."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and (
            issubclass(candidate, BaseModel) or dataclasses.is_dataclass(candidate)
        ):
            return candidate
    return None


def _meanings(model: type, prefix: str = "") -> dict[str, str]:
    meanings: dict[str, str] = {}
    for name, info in _fields(model).items():
        dotted = f"{prefix}.{name}" if prefix else name
        # a section's own meaning too: a list of mappings (`expected`) is one key as `--set` takes it
        meanings[dotted] = info.description or ""
        nested = _nested_model(info.annotation)
        if nested is not None:
            meanings.update(_meanings(nested, dotted))
    return meanings


@cache
def _defaults_and_meanings() -> tuple[dict[str, Any], dict[str, str]]:
    """The default config, dumped, and every key's meaning: read once, since the CLI asks for
    each stage's keys when it starts."""
    return PipelineConfig().model_dump(mode="json"), _meanings(PipelineConfig)


def section_keys(section: str) -> list[ConfigKey]:
    """Every key of one config section (nested ones dotted), with its default and meaning."""
    dumped, meanings = _defaults_and_meanings()
    defaults = flatten(dumped[section], section)
    return [ConfigKey(name, default, meanings.get(name, "")) for name, default in defaults.items()]


def describe_keys(sections: tuple[str, ...]) -> str:
    """The keys of `sections` as help text: one line each, `key = default: meaning`."""
    lines = []
    for section in sections:
        for key in section_keys(section):
            default = json.dumps(key.default) if not isinstance(key.default, str) else key.default
            lines.append(f"{key.name} = {default}" + (f": {key.meaning}" if key.meaning else ""))
    return "\n\n".join(lines)
