"""Under torchrun with 2 processes: train the dynamics model for a few steps (gloo on
CPU), and record which clips each rank's reader delivers in one epoch."""

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from torch.utils.data import DataLoader

from dynamics.settings import DynamicsSettings, STTransformerConfig
from dynamics.train import train_dynamics
from pipeline.latents import LatentClips

out, latents, tokenizer = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
accelerator = Accelerator(cpu=True)
reader = LatentClips(latents, rank=accelerator.process_index, world_size=accelerator.num_processes)
ids = [int(clip[0, 0, 0]) for batch in DataLoader(reader, batch_size=2, num_workers=2) for clip in batch]
(out / f"clips-{accelerator.process_index}.json").write_text(json.dumps(ids))

settings = DynamicsSettings(
    model=STTransformerConfig(d_model=32, n_layers=1, n_heads=2, max_frames=8),
    max_steps=4,
    batch_size=2,
    warmup_steps=1,
    eval_every=4,
    eval_batches=1,
    checkpoint_every=2,
    log_every=1,
    mixed_precision="no",  # fp32 like the Accelerator above: what is tested here is the split
)
summary = train_dynamics(settings, latents, tokenizer, out / "dynamics")
if accelerator.is_main_process:
    (out / "summary.json").write_text(json.dumps({**summary, "world_size": accelerator.num_processes}))
