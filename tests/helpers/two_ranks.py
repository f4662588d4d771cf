"""Run under torchrun with 2 processes: each rank reads one epoch of its own
videos (2 DataLoader workers each) and records the keys, then all ranks train
the tokenizer together for a few steps (gloo on CPU)."""

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from torch.utils.data import DataLoader

from pipeline.frames import RawVideoFrames, batch_frames
from pipeline.splits import TRAIN
from tokenizer.settings import TokenizerSettings, VQGANConfig
from tokenizer.train import FrameSource, train_tokenizer

out = Path(sys.argv[1])
shards = sys.argv[2:]
accelerator = Accelerator(cpu=True)
dataset = RawVideoFrames(
    shards,
    TRAIN,
    0.2,
    0.0,
    frame_size=32,
    channels=1,
    frames_per_video=2,
    rank=accelerator.process_index,
    world_size=accelerator.num_processes,
    repeat=False,
)
keys = [
    key
    for batch in DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=batch_frames)
    for key in batch["keys"]
]
(out / f"keys-{accelerator.process_index}.json").write_text(json.dumps(keys))

settings = TokenizerSettings(
    model=VQGANConfig(frame_size=32, base_channels=8, codebook_size=32, channel_mults=(1, 1, 2)),
    max_steps=4,
    batch_videos=2,
    frames_per_video=2,
    warmup_steps=1,
    disc_start=2,
    eval_every=4,
    eval_videos=2,
    checkpoint_every=2,
    restart_every=1,
    num_workers=1,
    log_every=1,
    mixed_precision="no",  # fp32 like the Accelerator above: what is tested here is the split
)
summary = train_tokenizer(settings, FrameSource(shards, 0.2, 0.0), out / "tokenizer")
if accelerator.is_main_process:
    (out / "summary.json").write_text(json.dumps({**summary, "world_size": accelerator.num_processes}))
