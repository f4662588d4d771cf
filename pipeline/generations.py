"""The generations contract: what `generate` leaves under `generations/<name>/` besides
`metrics.json` and the per-clip videos: the codes of every sample, and a preview grid."""

from __future__ import annotations

import numpy as np
import zarr

from pipeline import storage
from pipeline.latents import key_bytes, key_strings
from pipeline.preview import continuation_grid, gif_bytes
from pipeline.video import encode_mp4


def write_codes(uri: str, codes: list[np.ndarray], clips: list[int], names: list[str], attrs: dict) -> None:
    """`codes.zarr`: codes [N, S, P + K, h, w] (prompt and generated, every sample), one chunk
    per clip, with each clip's index and name (uint8 [N, width], UTF-8), and the settings that
    made them as attributes."""
    stacked = np.stack(codes)
    group = zarr.open_group(uri, mode="w")
    group.create_array("codes", data=stacked, chunks=(1, *stacked.shape[1:]))
    group.create_array("clip", data=np.array(clips, dtype=np.int64))
    # names as UTF-8 bytes (a Zarr v3 core type: every Zarr v3 reader opens it); `read_names`
    width = max((len(name.encode()) for name in names), default=1)
    group.create_array("name", data=key_bytes(names, width))
    group.attrs.update(attrs)


def read_names(uri: str) -> list[str]:
    """The clip names of a `codes.zarr` (stores written before names were bytes too)."""
    return key_strings(zarr.open_group(uri, mode="r")["name"][:]).tolist()


def write_preview(
    out: str,
    generated: list[np.ndarray],
    truth: list[np.ndarray],
    median: list[np.ndarray] | None,
    prompt_frames: int,
    fps: float,
) -> bytes:
    """`preview.gif` and `preview.mp4`: a row per clip, prompt held | sample 0 | the samples'
    median (when given) | truth; frames uint8 [T, C, H, W]. `out`: the folder, any URI.
    Returns the GIF's bytes (to log them without reading them back)."""
    grid = continuation_grid(generated, truth, prompt_frames, median)
    gif = gif_bytes(grid, fps, scale=2)
    storage.write_bytes_atomic(storage.join(out, "preview.gif"), gif)
    even = grid[:, : grid.shape[1] // 2 * 2, : grid.shape[2] // 2 * 2]  # yuv420p wants even sizes
    storage.write_bytes_atomic(storage.join(out, "preview.mp4"), encode_mp4(even, fps=fps))
    return gif
