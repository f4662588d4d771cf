"""The typed pipeline config: one YAML file, one section per stage.

A config is loaded from YAML, then `--set dotted.key=value` overrides are applied
to the raw mapping, and only then is the whole thing validated, so an override is
typed and checked exactly like the file. Every problem becomes one line naming the
dotted key, what was given and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

VIDEO_EXTENSIONS = ("mp4", "webm", "avi", "mkv", "mov")


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def problem(key: str, given: Any, expected: str) -> PydanticCustomError:
    """A cross-field error that names the offending key relative to the section raising it."""
    return PydanticCustomError(
        "stvideo_problem", "{key}: {expected}", {"key": key, "given": given, "expected": expected}
    )


class Section(BaseModel):
    # Unknown keys are errors: a typo in a key must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class MovingMnistConfig(Section):
    """The standard Moving MNIST generator (Srivastava et al. 2015)."""

    num_videos: int = Field(1000, ge=1, description="sequences to generate")
    num_frames: int = Field(20, ge=1)
    canvas_size: int = Field(64, ge=8)
    digits_per_video: int = Field(2, ge=1, le=8)
    digit_size: int = Field(28, ge=4)
    step_length: float = Field(0.1, gt=0, le=1)

    @model_validator(mode="after")
    def _digit_fits(self) -> MovingMnistConfig:
        if self.digit_size > self.canvas_size:
            raise problem("digit_size", self.digit_size, f"at most canvas_size ({self.canvas_size})")
        return self


class DataConfig(Section):
    source: Literal["folder", "moving-mnist"] = "moving-mnist"
    path: str | None = Field(
        None,
        description="folder: a directory, a glob or one video file; "
        "moving-mnist: an MNIST IDX glyph file or a fixed mnist_test_seq.npy (default: sklearn digits)",
    )
    seed: int = 0
    fps: float = Field(10.0, gt=0, description="frame rate of generated videos")
    clip_frames: int = Field(20, ge=1, description="frames in one training clip; shorter videos are rejected")
    extensions: list[str] = Field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    moving_mnist: MovingMnistConfig = Field(default_factory=MovingMnistConfig)

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source == "folder" and not self.path:
            raise problem("path", self.path, "a directory, a glob or a video file when source is 'folder'")
        generated = self.source == "moving-mnist" and not (self.path or "").endswith(".npy")
        if generated and self.moving_mnist.num_frames < self.clip_frames:
            raise problem(
                "moving_mnist.num_frames",
                self.moving_mnist.num_frames,
                f"at least clip_frames ({self.clip_frames}), or every generated video is rejected",
            )
        return self


class IngestConfig(Section):
    videos_per_shard: int = Field(
        64, ge=1, description="samples per raw webdataset shard (one Ray task each)"
    )
    codec: Literal["libx264", "mpeg4"] = "libx264"
    crf: int = Field(12, ge=0, le=51, description="x264 quality for generated videos (0 = lossless)")
    keyframe_interval: int = Field(10, ge=1, description="short GOPs make clip windows cheap to seek")
    overwrite: bool = Field(False, description="replace raw/ written by a different config")


class TokenizerConfig(Section):
    """Filled in by the train-tokenizer stage (issue 3)."""


class EncodeConfig(Section):
    """Filled in by the encode stage (issue 4)."""


class DynamicsConfig(Section):
    """Filled in by the train-dynamics stage (issue 5)."""


class GenerateConfig(Section):
    """Filled in by the generate stage (issue 6)."""


class TrackingConfig(Section):
    enabled: bool = True
    uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite database under root")
    experiment: str = "stvideo"


class RayConfig(Section):
    address: str | None = Field(None, description="join this cluster ('auto', 'host:port'); default: local")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for the embedded local Ray; default: all")


class PipelineConfig(Section):
    name: str = "stvideo"
    root: str = Field("out/demo", description="output root: a local path or s3://bucket/prefix")
    data: DataConfig = Field(default_factory=DataConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    dynamics: DynamicsConfig = Field(default_factory=DynamicsConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_validation_error(err: ValidationError, section_fields: dict[str, list[str]]) -> list[str]:
    lines = []
    for item in err.errors():
        location = [str(part) for part in item["loc"]]
        given = _describe(item.get("input"))
        if item["type"] == "stvideo_problem":
            location.append(item["ctx"]["key"])
            given, expected = _describe(item["ctx"]["given"]), item["ctx"]["expected"]
        elif item["type"] == "extra_forbidden":
            known = section_fields.get(".".join(location[:-1]), [])
            expected = "a known key: " + (", ".join(known) if known else "this section takes no keys yet")
        else:
            # pydantic says "Input should be a valid integer, unable to parse ..."
            expected = item["msg"].removeprefix("Input should be ").split(", unable to")[0]
        key = ".".join(location) or "(top level)"
        lines.append(f"{key}: given {given}, expected {expected}")
    return lines


def _known_fields(model: type[BaseModel], prefix: str = "") -> dict[str, list[str]]:
    known = {prefix: sorted(model.model_fields)}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            known.update(_known_fields(annotation, f"{prefix}.{name}" if prefix else name))
    return known


def parse_override(text: str) -> tuple[list[str], Any]:
    """`data.path=videos/` -> (['data', 'path'], 'videos/'); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {text!r}: expected dotted.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the literal string and let validation judge it
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    problems = []
    for text in overrides:
        try:
            path, value = parse_override(text)
        except ConfigError as err:
            problems.extend(err.problems)
            continue
        node = raw
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(path[: depth + 1])
                problems.append(f"--set {text!r}: {prefix} is a value ({child!r}), not a section")
                break
            node = child
        else:
            node[path[-1]] = value
    if problems:
        raise ConfigError(problems)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (or the defaults when `path` is None), apply overrides, validate."""
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError([f"--config: given {str(path)!r}; expected an existing YAML file"])
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
            raise ConfigError([f"{where}: not valid YAML ({getattr(err, 'problem', err)})"]) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"{path}: given {_describe(raw)}; expected a mapping of sections"])
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, _known_fields(PipelineConfig))) from None
