"""The tokenizer and dynamics pair as one MLflow pyfunc model: prompt frames in, continuation
frames out, made exactly as `generate` continues a clip (`dynamics.generate.continue_clip`).

MLflow logs this file as the model's code ("models from code": no pickle) beside its artifacts,
the two checkpoints (safetensors) and the generation settings, and runs it on load:

    model = mlflow.pyfunc.load_model("models:/stvideo-generator@champion")
    out = model.predict(prompts, params={"generate_frames": 10, "samples": 4, "seed": 0})

`prompts`: uint8 [N, P, C, H, W], N prompts of P frames each at the tokenizer's size.
`out["frames"]`: uint8 [N, S, K, C, H, W], the K frames after each prompt of each of its S
samples (sample 0 the likeliest when the settings say `greedy_first`); `out["codes"]`: int64
[N, S, P + K, h, w], the codes they were decoded from. Prompt n is seeded as `generate` seeds
clip `clip + n`, so the same prompt, seed and clip give what `generate` wrote for it.
"""

from __future__ import annotations

import dataclasses
import json

import mlflow
import numpy as np

PARAMS = ("generate_frames", "samples", "temperature", "seed")  # settings a caller may change


class Continuations(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from dynamics.checkpoint import load_dynamics
        from dynamics.generate import GenerationSettings
        from tokenizer.tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_pretrained(context.artifacts["tokenizer"])
        self.model, _ = load_dynamics(context.artifacts["dynamics"])
        with open(context.artifacts["settings"]) as handle:
            self.settings = GenerationSettings(**json.load(handle))

    def predict(self, context, model_input, params: dict | None = None) -> dict[str, np.ndarray]:
        import torch

        from dynamics.generate import continue_clip

        params = params or {}
        prompts = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.uint8))
        if prompts.ndim != 5:
            raise ValueError(f"prompts: given shape {tuple(prompts.shape)}, expected [N, P, C, H, W] uint8")
        prompt_frames = prompts.shape[1]
        settings = dataclasses.replace(
            self.settings,
            prompt_frames=prompt_frames,
            **{name: params[name] for name in PARAMS if params.get(name) is not None},
        )
        first_clip = int(params.get("clip") or 0)
        frames, codes = [], []
        for index, prompt in enumerate(prompts):
            prompt_codes = self.tokenizer.encode(prompt)
            run = continue_clip(
                self.model, self.tokenizer, prompt_codes, first_clip + index, settings, truth=prompt
            )
            frames.append(run.frames[:, prompt_frames:].numpy())
            codes.append(run.codes.numpy())
        return {"frames": np.stack(frames), "codes": np.stack(codes)}


mlflow.models.set_model(Continuations())
