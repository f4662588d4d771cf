"""The typed pipeline config: one YAML file, one section per stage.

A config is loaded from YAML, then `--set dotted.key=value` overrides are applied
to the raw mapping, and only then is the whole thing validated, so an override is
typed and checked exactly like the file. Every problem becomes one line naming the
dotted key, what was given and what was expected.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from common.settings import STRICT, problem
from dynamics.settings import DynamicsSettings
from tokenizer.settings import TokenizerSettings

VIDEO_EXTENSIONS = ("mp4", "webm", "avi", "mkv", "mov", "mpg", "mpeg", "ogv")
# a name that becomes one folder under the root: no separators, no '..', nothing hidden
SAFE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds one readable line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# MLflow's URIs of a checkpoint: a registered model's version or alias, or a run's artifacts
MODEL_URI_SCHEMES = ("models:/", "runs:/")


def absolute_local(uri: str | None) -> str | None:
    """Local paths become absolute, so Ray workers in other folders see the same files."""
    if not uri or "://" in uri or uri.startswith(MODEL_URI_SCHEMES):
        return uri
    return os.path.abspath(os.path.expanduser(uri))


class Section(BaseModel):
    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _empty_section_means_defaults(cls, data: Any) -> Any:
        # `tokenizer:` with nothing under it (or only comments) reads as None in YAML
        if isinstance(data, dict):
            return {
                key: value
                for key, value in data.items()
                if not (value is None and key in cls.model_fields and cls.model_fields[key].default_factory)
            }
        return data


class MovingMnistConfig(Section):
    """The standard Moving MNIST generator (Srivastava et al. 2015)."""

    num_videos: int = Field(1000, ge=1, description="sequences to generate")
    num_frames: int = Field(20, ge=1, description="frames of each sequence")
    canvas_size: int = Field(64, ge=8, description="side of the square canvas, in pixels")
    digits_per_video: int = Field(2, ge=1, le=8, description="digits moving in each sequence")
    digit_size: int = Field(28, ge=4, description="side of a digit's glyph, in pixels")
    step_length: float = Field(
        0.1, gt=0, le=1, description="a digit's move per frame, as a share of the room it has to move in"
    )

    @model_validator(mode="after")
    def _digit_fits(self) -> MovingMnistConfig:
        if self.digit_size > self.canvas_size:
            raise problem("digit_size", self.digit_size, f"at most canvas_size ({self.canvas_size})")
        return self


class DataConfig(Section):
    source: Literal["folder", "moving-mnist"] = Field(
        "moving-mnist", description="folder: videos you bring (data.path); moving-mnist: generated here"
    )
    path: str | None = Field(
        None,
        description="folder: a directory, a glob or one video file; "
        "moving-mnist: an MNIST IDX glyph file or a fixed mnist_test_seq.npy (default: sklearn digits)",
    )
    seed: int = Field(0, description="seed of what ingest draws: Moving MNIST's digits and paths")
    fps: float = Field(
        10.0, gt=0, description="frame rate of generated videos, and of brought ones when ingest.transcode"
    )
    frame_size: int | None = Field(
        None,
        ge=16,
        description="side of the square frames ingest stores for brought videos (ingest.transcode); "
        "default: tokenizer.model.frame_size",
    )
    fit: Literal["centre", "random", "pad"] = Field(
        "centre",
        description="a brought video's aspect is kept: its short side scaled to frame_size and the long "
        "side cropped at the centre or at a random place (one per video), or its long side scaled and padded",
    )
    shot_threshold: float = Field(
        30.0,
        ge=0,
        le=255,
        description="mean grey change (0-255) between two frames that can be a shot cut (ingest.transcode); "
        "clips never cross a cut",
    )
    clip_frames: int = Field(20, ge=1, description="frames in one training clip; shorter videos are rejected")
    split_by: Literal["auto", "video", "time"] = Field(
        "auto",
        description="video: whole videos per split; time: train, val and test parts of every video, a "
        "clip apart; auto: video when each held-out split gets 3 videos or more",
    )
    val_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of videos (or of each video's frames) for validation"
    )
    test_fraction: float = Field(
        0.05, ge=0, lt=1, description="share of videos (or of each video's frames) for testing"
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(VIDEO_EXTENSIONS), description="folder: the file endings read as videos"
    )
    decoder: Literal["auto", "decord", "pyav"] = Field(
        "auto",
        description="video decoder: decord where it is installed (x86-64 wheels), else PyAV; or force one",
    )
    moving_mnist: MovingMnistConfig = Field(default_factory=MovingMnistConfig)

    _absolute_path = field_validator("path")(classmethod(lambda cls, value: absolute_local(value)))

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
    codec: Literal["libx264", "mpeg4"] = Field(
        "libx264", description="codec of the videos stored in raw shards"
    )
    crf: int = Field(12, ge=0, le=51, description="x264 quality for generated videos (0 = lossless)")
    keyframe_interval: int = Field(10, ge=1, description="short GOPs make clip windows cheap to seek")
    transcode: bool = Field(
        True,
        description="brought videos stored at data.fps and data.frame_size with short GOPs, decoded once "
        "here rather than at every epoch; false stores the files as they are (and finds no shot cuts)",
    )
    overwrite: bool = Field(
        False, description="replace complete raw shards made from other inputs or another data/ingest config"
    )


class EncodeConfig(Section):
    tokenizer: str | None = Field(
        None,
        description="the tokenizer encode and generate use: a checkpoint folder, models:/<name>/<version>, "
        "models:/<name>@<alias> or runs:/<run id>/<path>; default: <root>/tokenizer",
    )
    clip_stride: int | None = Field(
        None, ge=1, description="frames between clip starts; default: clip_frames"
    )
    fps: float | None = Field(None, gt=0, description="resample to about this rate; default: the source's")
    clips_per_shard: int = Field(64, ge=1, description="clips per zarr shard file (one writer owns one)")
    batch_size: int = Field(16, ge=1, description="clips per encoder batch")
    num_actors: int = Field(1, ge=1, description="tokenizer encoder actors")
    threads: int = Field(
        1, ge=1, description="torch threads per encoder actor (decoding tasks share the same cores)"
    )
    num_gpus: float = Field(1.0, ge=0, description="GPUs per encoder actor, when the cluster has GPUs")
    actor_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each encoder actor holds, e.g. {encoder: 1}"
    )

    _absolute_tokenizer = field_validator("tokenizer")(classmethod(lambda cls, value: absolute_local(value)))


class GenerateConfig(Section):
    _absolute_videos = field_validator("videos")(classmethod(lambda cls, value: absolute_local(value)))
    _absolute_dynamics = field_validator("dynamics")(classmethod(lambda cls, value: absolute_local(value)))

    name: str = Field(
        "default", description="output folder under <root>/generations/: letters, digits, '.', '_', '-'"
    )

    @field_validator("name")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        # it becomes a folder that is replaced on a rerun: it must stay under generations/
        if not re.fullmatch(SAFE_NAME, value):
            raise problem("", value, "a folder name of letters, digits, '.', '_', '-' (no '/', not '..')")
        return value

    videos: str | None = Field(
        None, description="continue these videos (a folder, glob or file) instead of a split of latents.zarr"
    )
    dynamics: str | None = Field(
        None,
        description="the dynamics model: a checkpoint folder, models:/<name>/<version>, "
        "models:/<name>@<alias> or runs:/<run id>/<path>; default: <root>/dynamics",
    )
    model: str | None = Field(
        None,
        description="a generator model a generate run registered (models:/<name>/<version> or "
        "models:/<name>@<alias>): its tokenizer and dynamics checkpoints, in place of encode.tokenizer "
        "and generate.dynamics",
    )
    split: Literal["train", "val", "test"] = Field("test", description="the split whose clips are continued")
    prompt_frames: int = Field(10, ge=1, description="P: frames given to the model")
    generate_frames: int = Field(
        10, ge=1, description="K: frames to generate (may exceed the training length)"
    )
    samples: int = Field(1, ge=1, description="S: samples per prompt (the Gaussian layers are stochastic)")
    temperature: float = Field(0.0, ge=0, description="categorical and tied heads: 0 = argmax")
    greedy_first: bool = Field(
        True,
        description="sample 0 is the likeliest continuation (temperature 0), the others are drawn at "
        "`temperature`: the video shown is the model's best guess, the average hedges over all",
    )
    top_k: int | None = Field(
        None, ge=1, description="categorical and tied heads: sample among the k likeliest"
    )
    seed: int = Field(0, description="seed of the samples' draws: a rerun gives the same continuations")
    deterministic: bool = Field(False, description="Gaussian layers pass their means")
    max_clips: int | None = Field(64, ge=1, description="clips of the split to continue; null: all")
    batch_size: int = Field(8, ge=1, description="clips per generator batch")
    num_actors: int = Field(1, ge=1, description="generator actors (each loads the models once)")
    num_gpus: float = Field(1.0, ge=0, description="GPUs per actor, when the cluster has GPUs")
    actor_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each actor holds, e.g. {generator: 1}"
    )
    preview_clips: int = Field(6, ge=1, description="clips in the preview grid")
    decode: Literal["codes", "expected"] = Field(
        "codes",
        description="generated frames from their nearest codes, or from the code vectors the model "
        "expects (its hedge where unsure; the codes fed back and stored stay the nearest)",
    )
    anchor: bool = Field(
        False,
        description="generated frames are the true last prompt frame plus the change the decoder draws "
        "from its codes to each generated frame's: what the model leaves unmoved keeps the prompt's own "
        "pixels, not the tokenizer's reconstruction of them",
    )
    anchor_threshold: float = Field(
        0.0,
        ge=0,
        description="with anchor: each pixel's decoded change is shrunk by this many grey levels (0-255, "
        "on its largest channel), so a smaller one keeps the prompt's pixel: the tokenizer's flicker "
        "between codings, not motion, is not drawn (a soft threshold)",
    )
    protocols: list[tuple[int, int]] = Field(
        default_factory=list,
        description="further (prompt, generated) frame counts scored on the same clips, e.g. [[15, 5]]",
    )

    @field_validator("protocols")
    @classmethod
    def _positive_protocols(cls, value: list[tuple[int, int]]) -> list[tuple[int, int]]:
        for index, (prompt_frames, generate_frames) in enumerate(value):
            if prompt_frames < 1 or generate_frames < 1:
                raise problem(str(index), [prompt_frames, generate_frames], "positive frame counts")
        return value

    mean_frame_videos: int = Field(
        200, ge=1, description="train-split videos averaged into the mean-frame reference"
    )


class TrackingConfig(Section):
    enabled: bool = Field(True, description="track runs in MLflow; false: nothing is logged")
    uri: str | None = Field(
        None,
        description="MLflow tracking URI; default: MLFLOW_TRACKING_URI, else one sqlite store for all of a "
        "user's runs, $STVIDEO_HOME/mlflow.db (STVIDEO_HOME: ~/.stvideo)",
    )
    experiment: str = Field("stvideo", description="the MLflow experiment runs go to")
    tokenizer_model: str | None = Field(
        "stvideo-tokenizer",
        description="registered model a trained tokenizer becomes a version of; null: none",
    )
    dynamics_model: str | None = Field(
        "stvideo-dynamics",
        description="registered model a trained dynamics model becomes a version of; null: none",
    )
    generator_model: str | None = Field(
        "stvideo-generator",
        description="registered model generate's tokenizer and dynamics pair becomes a version of, as one "
        "MLflow pyfunc model (prompt frames in, continuation frames out); null: none",
    )
    system_metrics: bool = Field(
        True, description="log CPU, memory (and GPU) use beside each stage's metrics"
    )


class RayConfig(Section):
    address: str | None = Field(None, description="join this cluster ('auto', 'host:port'); default: local")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for the embedded local Ray; default: all")
    train_workers: int = Field(
        0, ge=0, description="both training stages in this many Ray Train workers; 0: in the stage's process"
    )
    train_cpus: float = Field(1, gt=0, description="CPUs each Ray Train worker holds")
    train_gpus: float = Field(0, ge=0, description="GPUs each Ray Train worker holds (0: trains on CPU)")
    train_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each Ray Train worker holds, e.g. {trainer: 1}",
    )
    max_failures: int = Field(
        2,
        ge=-1,
        description="restarts of a training stage's workers from its last checkpoint; -1: no limit",
    )


class StageResources(Section):
    """What Ray reserves for one stage's job driver (`entrypoint_num_cpus`, `entrypoint_num_gpus`)."""

    # 0 by default: a stage that fans out needs its cluster's CPUs for its own tasks
    num_cpus: float = Field(0, ge=0, description="CPUs the driver holds")
    num_gpus: float = Field(0, ge=0, description="GPUs the driver holds (training runs in the driver)")
    memory: int | None = Field(None, ge=1, description="bytes of memory the driver holds")


# the stages' CLI names in pipeline order; the registry (`jobs.stages.STAGES`) holds one spec
# for each, in this order (tests/test_layers.py checks), and this module imports no stage
STAGE_NAMES = ("ingest", "train-tokenizer", "encode", "train-dynamics", "generate")


def stage_names(value: dict) -> dict:
    """A mapping keyed by stages' CLI names: each key must name one."""
    for name in value:
        if name not in STAGE_NAMES:
            raise problem(name, name, "a stage: " + ", ".join(STAGE_NAMES))
    return value


class SubmitConfig(Section):
    """`stvideo submit`: each stage as its own Ray job through the Jobs API."""

    address: str | None = Field(
        None, description="Jobs API, http://HOST:8265; default: http://127.0.0.1:8265"
    )
    python: str | None = Field(
        None, description="interpreter on the cluster that has stvideo installed; default: this one"
    )
    working_dir: str | None = Field(None, description="upload this folder as the jobs' working_dir")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for every job")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env of every job, passed through (pip, env_vars, working_dir, excludes...)",
    )
    resources: dict[str, StageResources] = Field(
        default_factory=dict,
        description="per stage (its CLI name, e.g. train-dynamics): what its job driver holds",
    )

    _known_stages = field_validator("resources")(classmethod(lambda cls, value: stage_names(value)))

    retries: int = Field(8, ge=0, description="resubmissions on the cluster's transient answers")
    log_tail: int = Field(40, ge=1, description="log lines shown when a stage fails")


class ExpectedTime(Section):
    """A run of this config from scratch, to plan by: `stvideo run` measures this machine's
    matmul rates and scales each stage's seconds by the reference machine's rate over this one's,
    in the precision the stage multiplied in there (`precision`) and will multiply in here (the
    training stages' `mixed_precision` on this CPU)."""

    matmul_gflops: dict[Literal["fp32", "bf16"], float] = Field(
        description="the reference machine's dense matmul rates, GFLOP/s (bench/training.py prints them)"
    )
    stage_seconds: dict[str, float] = Field(description="each stage's seconds in the reference run")
    precision: dict[str, Literal["fp32", "bf16"]] = Field(
        default_factory=dict,
        description="the precision each stage multiplied in on the reference machine (fp32 where not named)",
    )
    measured: str = Field("", description="where and how the reference run was measured, for people")

    _known_stages = field_validator("stage_seconds", "precision")(
        classmethod(lambda cls, value: stage_names(value))
    )

    @model_validator(mode="after")
    def _rates_for_its_precisions(self) -> ExpectedTime:
        for precision in {"fp32", *self.precision.values()}:
            if precision not in self.matmul_gflops:
                raise ValueError(
                    f"matmul_gflops: expected a {precision} rate (the stages run in it scale by it)"
                )
        return self


class PipelineConfig(Section):
    name: str = Field("stvideo", description="the config's name: runs and Ray jobs are named after it")
    root: str = Field("out/demo", description="output root: a local path or s3://bucket/prefix")
    scratch: str | None = Field(
        None,
        description="local cache of what a remote root's stages read and write (deletable at any time); "
        "default: $STVIDEO_SCRATCH, else ~/.cache/stvideo",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    encode: EncodeConfig = Field(default_factory=EncodeConfig)
    dynamics: DynamicsSettings = Field(default_factory=DynamicsSettings)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    submit: SubmitConfig = Field(default_factory=SubmitConfig)
    expected: list[ExpectedTime] = Field(
        default_factory=list,
        description="reference runs' times, to plan by (one mapping or a list: a stage scales from the "
        "run at the nearest rate among those that multiplied in the precision this machine will)",
    )

    @field_validator("expected", mode="before")
    @classmethod
    def _one_reference_or_several(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    _absolute_root = field_validator("root")(classmethod(lambda cls, value: absolute_local(value)))

    @model_validator(mode="before")
    @classmethod
    def _colour_for_footage(cls, raw: Any) -> Any:
        """Brought footage is in colour unless the config says otherwise; Moving MNIST stays grey."""
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
            return raw
        tokenizer = raw.get("tokenizer", {})
        model = tokenizer.get("model", {}) if isinstance(tokenizer, dict) else None
        if raw["data"].get("source") != "folder" or not isinstance(model, dict) or "in_channels" in model:
            return raw  # not footage, said explicitly, or malformed (validation names it)
        return {**raw, "tokenizer": {**tokenizer, "model": {**model, "in_channels": 3}}}

    @model_validator(mode="after")
    def _one_source_of_checkpoints(self) -> PipelineConfig:
        model = self.generate.model
        if model and not model.startswith("models:/"):
            raise problem("generate.model", model, "models:/<name>/<version> or models:/<name>@<alias>")
        if model and (self.generate.dynamics or self.encode.tokenizer):
            given = "generate.dynamics" if self.generate.dynamics else "encode.tokenizer"
            raise problem("generate.model", model, f"no {given} beside it: the model holds both checkpoints")
        return self

    @model_validator(mode="after")
    def _footage_frame_size(self) -> PipelineConfig:
        # resolved here, so that the ingest's identity holds the size its shards have
        if self.data.source == "folder" and self.ingest.transcode and self.data.frame_size is None:
            self.data.frame_size = self.tokenizer.model.frame_size
        return self

    def to_yaml(self) -> str:
        """The config as YAML with every secret replaced by `REDACTED`: what is logged, printed or
        stored. The real values stay in this process (and in the jobs' environment)."""
        return yaml.safe_dump(redacted(self.model_dump(mode="json")), sort_keys=False)


REDACTED = "<redacted>"
# a value is a secret when a word of its key says so (AWS_SECRET_ACCESS_KEY, api-key, not
# keyframe_interval or tokenizer); every value of `submit.env` and of the jobs' env_vars is one too
SECRET_WORD = re.compile(r"(^|[_.-])(key|secret|token|password|passwd|credentials?)($|[_.-])", re.IGNORECASE)


def is_secret(dotted_key: str) -> bool:
    return dotted_key.startswith(("submit.env.", "submit.runtime_env.env_vars.")) or bool(
        SECRET_WORD.search(dotted_key.rsplit(".", 1)[-1])
    )


def redacted(value: Any, path: str = "") -> Any:
    """A dumped config (nested mappings) with the values of secret keys replaced."""
    if isinstance(value, dict):
        return {key: redacted(item, f"{path}.{key}" if path else str(key)) for key, item in value.items()}
    return REDACTED if is_secret(path) and value not in (None, "") else value


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_validation_error(err: ValidationError, section_fields: dict[str, list[str]]) -> list[str]:
    lines = []
    for item in err.errors():
        location = [str(part) for part in item["loc"]]
        given = _describe(item.get("input"))
        if item["type"] == "stvideo_problem":
            location += [item["ctx"]["key"]] if item["ctx"]["key"] else []
            given, expected = _describe(item["ctx"]["given"]), item["ctx"]["expected"]
        elif item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            known = section_fields.get(".".join(location[:-1]), [])
            expected = "a known key: " + (", ".join(known) if known else "this section takes no keys yet")
        else:
            # pydantic says "Input should be a valid integer, unable to parse ..."
            expected = item["msg"].removeprefix("Input should be ").split(", unable to")[0]
        key = ".".join(location) or "(top level)"
        lines.append(f"{key}: given {given}, expected {expected}")
    return lines


def _field_types(model: type) -> dict[str, Any]:
    """Field name -> annotation, for pydantic models and plain dataclasses alike."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return {name: field.annotation for name, field in model.model_fields.items()}
    if dataclasses.is_dataclass(model):
        return typing.get_type_hints(model)
    return {}


def _known_fields(model: type, prefix: str = "") -> dict[str, list[str]]:
    fields = _field_types(model)
    known = {prefix: sorted(fields)}
    for name, annotation in fields.items():
        if _field_types(annotation):
            known.update(_known_fields(annotation, f"{prefix}.{name}" if prefix else name))
    return known


def _is_text(path: list[str]) -> bool:
    """Whether the field at `path` holds text, so `--set name=off` stays the string 'off'."""
    annotation: Any = PipelineConfig
    for part in path:
        annotation = _field_types(annotation).get(part)
        if annotation is None:
            return False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return set(typing.get_args(annotation)) <= {str, type(None)}
    return annotation is str


def parse_override(text: str) -> tuple[list[str], Any]:
    """`data.path=videos/` -> (['data', 'path'], 'videos/'); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {text!r}: expected dotted.key=value"])
    path = key.split(".")
    if _is_text(path):
        return path, None if raw.strip() in ("", "null", "~") else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the literal string and let validation judge it
    return path, value


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
            if node.get(part) is None:  # an empty section in the file
                node[part] = {}
            child = node[part]
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


CONFIG_ENV_PREFIX = "env:"  # `--config env:NAME`: the YAML is the value of environment variable NAME


def _read_config_text(path: str) -> str:
    """A local file, a URI, or `env:NAME` (`stvideo submit` hands its jobs their config that way:
    it travels with the job, so the submitting machine needs no access to the root)."""
    if path.startswith(CONFIG_ENV_PREFIX):
        name = path.removeprefix(CONFIG_ENV_PREFIX)
        if name in os.environ:
            return os.environ[name]
        raise ConfigError(
            [f"--config: given {path!r}; expected environment variable {name} to hold a config"]
        )
    if "://" in path:
        from pipeline import storage

        if storage.exists(path):
            return storage.read_bytes(path).decode()
    elif Path(path).is_file():
        return Path(path).read_text()
    raise ConfigError([f"--config: given {path!r}; expected an existing YAML file"])


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config (or the defaults when `path` is None), apply overrides, validate."""
    raw: Any = {}
    if path is not None:
        text = _read_config_text(str(path))
        try:
            raw = yaml.safe_load(text) or {}
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
