"""The trained pair as an MLflow model: at the end of `generate`, the tokenizer and dynamics
checkpoints it used and its generation settings are logged to its run as one pyfunc model
(`jobs/generator_pyfunc.py`: prompt frames in, continuation frames out) with a signature, and
registered as a version of `tracking.generator_model` whose description holds its test scores.

The alias `champion` moves to the new version when it beats the current champion on the same
clips (the same latents, split, prompt and horizon: `SCORED_ON_TAG`) by sample 0's mean MSE, or
when there is none; `stvideo models promote` moves it by hand.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np

from common.identity import file_identity, store_identity, value_identity
from jobs.model_registry import CHECKPOINT_FILES, IDENTITY_TAG, KIND_TAG

ARTIFACT_PATH = "generator"  # under the generate stage's run
CODE = Path(__file__).with_name("generator_pyfunc.py")
PACKAGES = Path(__file__).resolve().parents[1]
CODE_PATHS = ("tokenizer", "dynamics", "common")  # what the model's code imports, carried with it
REQUIREMENTS = ("torch", "numpy", "safetensors", "pydantic", "einops")
SCORE_TAG = "stvideo.score.mse"  # sample 0's mean MSE per frame on the clips below (lower wins)
SCORED_ON_TAG = "stvideo.scored_on"
CHAMPION = "champion"


def signature(settings, frame_shape: tuple[int, int, int], grid: tuple[int, int]):
    """Prompts uint8 [N, P, C, H, W] in; the K frames after each of S samples and their codes out;
    the settings a caller may change as params, with this run's values as defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, *frame_shape))]),
        outputs=Schema(
            [
                TensorSpec(np.dtype(np.uint8), (-1, -1, -1, *frame_shape), "frames"),
                TensorSpec(np.dtype(np.int64), (-1, -1, -1, *grid), "codes"),
            ]
        ),
        params=ParamSchema(
            [
                ParamSpec("generate_frames", "long", settings.generate_frames),
                ParamSpec("samples", "long", settings.samples),
                ParamSpec("temperature", "double", float(settings.temperature)),
                ParamSpec("seed", "long", settings.seed),
                ParamSpec("clip", "long", 0),
            ]
        ),
    )


def describe(metrics: dict, settings, scored_on: str) -> str:
    """The registered version's description: what it does and its headline scores."""
    mean, clips = metrics["mean"], metrics.get("clips", 0)
    lines = [
        f"Continues {settings.prompt_frames} prompt frames by {settings.generate_frames} "
        f"({settings.samples} samples; sample 0 the likeliest). Scored on {clips} clips ({scored_on}):"
    ]
    rows = (("model", "sample 0"), ("copy_last", "copy-last"), ("reconstruction", "tokenizer bound"))
    for row, label in rows:
        if row in mean:
            lines.append(f"- {label}: MSE per frame {mean[row]['mse']:.1f}, SSIM {mean[row]['ssim']:.3f}")
    lines.append("MSE: summed over C x H x W of [0, 1] pixels, per frame, averaged over steps and clips.")
    return "\n".join(lines)


def scored(gen, latents_attrs, metrics: dict) -> dict:
    """What `log_and_register` records of a generate run's scores: the frames' shape and the
    latent grid (from the latent store's attributes), the metrics, and what they were scored on."""
    size = int(latents_attrs["frame_size"])
    if gen.videos:
        on = f"videos {gen.videos}"
    else:
        on = f"latents {store_identity(latents_attrs)[:12]}, {gen.split} split"
    return {
        "frame_shape": (int(latents_attrs["channels"]), size, size),
        "grid": tuple(latents_attrs["grid"]),
        "metrics": metrics,
        "scored_on": f"{on}, {metrics['clips']} clips, {gen.prompt_frames} -> {gen.generate_frames} frames",
    }


def log_and_register(
    client,
    name: str,
    folders: dict[str, Path],
    settings,
    frame_shape: tuple[int, int, int],
    grid: tuple[int, int],
    metrics: dict,
    scored_on: str,
    root: str,
) -> tuple[str, bool]:
    """Logs the model to the active run and registers it; (its `models:/` URI, whether it became
    the champion)."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        artifacts = {}
        for kind, source in folders.items():  # the checkpoint, not its training state
            artifacts[kind] = str(Path(folder) / kind)
            Path(artifacts[kind]).mkdir()
            for file in CHECKPOINT_FILES:
                if (source / file).exists():
                    shutil.copy(source / file, Path(artifacts[kind]) / file)
        artifacts["settings"] = str(Path(folder) / "settings.json")
        Path(artifacts["settings"]).write_text(json.dumps(asdict(settings)))
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_PATH,
            python_model=str(CODE),
            artifacts=artifacts,
            code_paths=[str(PACKAGES / package) for package in CODE_PATHS],
            signature=signature(settings, frame_shape, grid),
            pip_requirements=[f"{package}=={metadata.version(package)}" for package in REQUIREMENTS],
        )
    score = metrics["mean"]["model"]["mse"]
    weights = [file_identity(folders[kind] / "model.safetensors") for kind in ("tokenizer", "dynamics")]
    tags = {
        SCORE_TAG: f"{score:.6g}",
        SCORED_ON_TAG: scored_on,
        KIND_TAG: "generator",
        IDENTITY_TAG: value_identity(weights),  # the pair's: both checkpoints' weights
        "stvideo.root": root,
    }
    version = mlflow.register_model(info.model_uri, name, tags=tags).version
    client.update_model_version(name, version, description=describe(metrics, settings, scored_on))
    promoted = _champion_beaten(client, name, score, scored_on)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    return f"models:/{name}/{version}", promoted


def _champion_beaten(client, name: str, score: float, scored_on: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return True  # none yet
    if champion.tags.get(SCORED_ON_TAG) != scored_on:
        return False  # scored on other clips: not comparable
    return score < float(champion.tags.get(SCORE_TAG, "inf"))
