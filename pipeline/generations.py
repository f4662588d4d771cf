"""The generations contract: what `generate` leaves under `generations/<name>/` besides
`metrics.json` and the per-clip videos: the codes of every sample, and a preview grid.

`codes.zarr` (Zarr v3 group):
- `codes` uint16 [N, S, P + K, h, w]: prompt and generated codes of every sample, one chunk per
  clip, so the actors that generate them write their own clips and never share a chunk;
- `clip` int64 [N]: each clip's index in the latent store (or in the brought videos);
- `name` uint8 [N, width]: each clip's name in UTF-8, zero-padded (`read_names`);
- `ok` uint8 [N]: 1 where the clip was generated, 0 where its input was rejected (its codes are
  zeros; `metrics.json` names the reason); absent from stores written before it (all were ok);
- attributes: the settings that made them, and `complete` once every clip is recorded.

The driver pre-sizes the arrays; each actor writes its batch's clips, then a record of the batch
under `_progress/` (each clip's scores or error, and who wrote it): a killed run resumes with the
clips no record names, and the driver aggregates the records, never receiving codes.
"""

from __future__ import annotations

import io
import json
import os
import socket

import numpy as np
import zarr

from pipeline import storage
from pipeline.latents import key_bytes, key_strings
from pipeline.preview import continuation_grid, gif_bytes
from pipeline.video import encode_mp4

PROGRESS_DIR = "_progress"


class GenerationStore:
    """`codes.zarr` as generate writes it: pre-sized by the driver, written clip by clip by the
    actors, each batch recorded under `_progress/` once its clips are written."""

    def __init__(self, uri: str, group: zarr.Group):
        self.uri, self.group = uri, group

    @classmethod
    def prepare(cls, uri: str, clip_shape: tuple, clips: list[int], names: list[str], attrs: dict):
        """The store an unfinished run of these very clips and settings left (to resume it),
        else a new one. The runner hands generate a fresh staging location whenever the config
        or inputs change, so a store with other contents is one a crash left half made."""
        if storage.exists(storage.join(uri, "zarr.json")):
            try:
                store = cls.open(uri)
                same = store.group["codes"].shape == (len(clips), *clip_shape)
                same = same and np.array_equal(store.group["clip"][:], clips)
                same = same and all(store.group.attrs.get(key) == value for key, value in attrs.items())
            except (KeyError, ValueError, OSError):
                same = False
            if same:
                return store
            storage.remove(uri, recursive=True)
        group = zarr.open_group(uri, mode="w")
        group.create_array(
            "codes", shape=(len(clips), *clip_shape), chunks=(1, *clip_shape), dtype=np.uint16, fill_value=0
        )
        group.create_array("clip", data=np.array(clips, dtype=np.int64))
        # names as UTF-8 bytes (a Zarr v3 core type: every Zarr v3 reader opens it); `read_names`
        width = max((len(name.encode()) for name in names), default=1)
        group.create_array("name", data=key_bytes(names, width))
        group.attrs.update({**attrs, "complete": False})
        return cls(uri, group)

    @classmethod
    def open(cls, uri: str) -> GenerationStore:
        return cls(uri, zarr.open_group(uri, mode="r+"))

    def write_clip(self, position: int, codes: np.ndarray) -> None:
        """One clip's codes [S, P + K, h, w] into its own chunk."""
        with storage.naming(self.uri):
            self.group["codes"][position] = codes.astype(np.uint16, copy=False)

    def write_preview(self, position: int, frames: dict[str, np.ndarray]) -> None:
        """A preview clip's frames (name -> uint8 [T, C, H, W]), for the driver's grid."""
        buffer = io.BytesIO()
        np.savez(buffer, **frames)
        storage.write_bytes_atomic(self._progress(f"preview-{position:06d}.npz"), buffer.getvalue())

    def record_batch(self, clips: list[dict], note: dict | None = None) -> None:
        """Mark a batch's clips done (written first): each one's `position`, scores or error,
        and who wrote them. Named by its first position: a resumed run never starts a batch at a
        recorded clip, so no record is overwritten by another batch's."""
        first = min(clip["position"] for clip in clips)
        writer = {"host": socket.gethostname(), "pid": os.getpid()}
        record = {"clips": clips, "writer": writer, **(note or {})}
        storage.write_bytes_atomic(self._progress(f"batch-{first:06d}.json"), json.dumps(record).encode())

    def records(self) -> list[dict]:
        """Every recorded batch, in position order."""
        names = [name for name in storage.list_names(self._progress()) if name.startswith("batch-")]
        names = [name for name in names if name.endswith(".json")]
        return [storage.read_json(self._progress(name)) for name in names]

    def done_positions(self) -> set[int]:
        return {clip["position"] for record in self.records() for clip in record["clips"]}

    def preview(self, position: int) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(storage.read_bytes(self._progress(f"preview-{position:06d}.npz")))) as saved:
            return {name: saved[name] for name in saved.files}

    def gather(self, planned: int) -> tuple[list[dict], list[dict]]:
        """Every clip the actors recorded, in position order, as (generated, rejected: each
        `{clip: name, reason}`); then the store is marked complete. Raises when a planned clip
        has no record."""
        clips = sorted((clip for record in self.records() for clip in record["clips"]), key=_position)
        if [clip["position"] for clip in clips] != list(range(planned)):
            raise RuntimeError(f"generate: {self.uri} records {len(clips)} clips, not the {planned} planned")
        rejected = [{"clip": clip["name"], "reason": clip["error"]} for clip in clips if clip["error"]]
        done = [clip for clip in clips if not clip["error"]]
        if done:
            self.finish(np.array([not clip["error"] for clip in clips]))
        return done, rejected

    def write_previews(self, positions: list[int], out: str, prompt_frames: int, fps: float) -> bytes:
        """`write_preview` of the clips at `positions`, from the frames their actors recorded
        (the samples' median shown when there were several samples); returns the GIF's bytes."""
        shown = [self.preview(position) for position in positions]
        frames = {kind: [clip[kind] for clip in shown] for kind in ("generated", "median", "truth")}
        median = frames["median"] if self.group["codes"].shape[1] > 1 else None
        return write_preview(out, frames["generated"], frames["truth"], median, prompt_frames, fps)

    def finish(self, ok: np.ndarray, attrs: dict | None = None) -> None:
        """Every clip recorded: which were generated, then `complete`."""
        self.group.create_array("ok", data=np.asarray(ok, dtype=np.uint8), overwrite=True)
        self.group.attrs.update({**(attrs or {}), "complete": True})

    def _progress(self, name: str = "") -> str:
        folder = storage.join(self.uri, PROGRESS_DIR)
        return storage.join(folder, name) if name else folder


def _position(clip: dict) -> int:
    return clip["position"]


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
