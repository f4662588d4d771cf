"""The generator model's registry rules, on the test session's store: when `@champion` moves,
and what its signature promises."""

from __future__ import annotations

import numpy as np

from dynamics.generate import GenerationSettings
from jobs import generator_model
from tests.conftest import DEFAULT_TRACKING_URI


def test_champion_moves_only_to_a_lower_mse_on_the_same_clips(tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=DEFAULT_TRACKING_URI)
    name = f"generator-{tmp_path.name}"  # one of its own in the shared store
    client.create_registered_model(name)
    beaten = generator_model._champion_beaten
    assert beaten(client, name, 50.0, "latents a, test split")  # no champion yet
    tags = {generator_model.SCORE_TAG: "50", generator_model.SCORED_ON_TAG: "latents a, test split"}
    version = client.create_model_version(name, source=str(tmp_path), tags=tags).version
    client.set_registered_model_alias(name, generator_model.CHAMPION, version)
    assert beaten(client, name, 49.9, "latents a, test split")
    assert not beaten(client, name, 50.1, "latents a, test split")
    assert not beaten(client, name, 1.0, "latents b, test split")  # other clips: not comparable


def test_the_signature_takes_prompts_and_the_settings_a_caller_may_change():
    settings = GenerationSettings(prompt_frames=10, generate_frames=10, samples=4, temperature=1.0, seed=3)
    signature = generator_model.signature(settings, (1, 64, 64), (8, 8))
    [prompts] = signature.inputs.inputs
    assert prompts.type == np.dtype(np.uint8) and prompts.shape == (-1, -1, 1, 64, 64)
    outputs = {spec.name: spec.shape for spec in signature.outputs.inputs}
    assert outputs == {"frames": (-1, -1, -1, 1, 64, 64), "codes": (-1, -1, -1, 8, 8)}
    defaults = {param.name: param.default for param in signature.params.params}
    assert defaults == {"generate_frames": 10, "samples": 4, "temperature": 1.0, "seed": 3, "clip": 0}
