"""`stvideo status --verify`: read every stored byte a later stage would read, and name what
does not read back: raw shards to their end (each sample the manifest lists), every shard of
the latent store decoded, every generated clip's codes decoded, every checkpoint's weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common.logs import first_line
from jobs.layout import Layout
from pipeline import storage


@dataclass
class Checked:
    what: str  # "raw shards", "latents.zarr shards", ...
    count: int
    bad: list[str]  # one line each: the file and why


def verify(layout: Layout, progress: Callable[[str], None] = lambda line: None) -> list[Checked]:
    """Each kind of stored data under the root, read whole; kinds the root does not hold yet are left out."""
    checks = [
        ("raw shards", _raw_shards(layout)),
        ("latents.zarr shards", _latent_shards(layout)),
        ("checkpoints", _checkpoints(layout)),
        ("generated clips", _generated_clips(layout)),
    ]
    results = []
    for what, items in checks:
        count, bad = 0, []
        for item, problem in items:
            count += 1
            if problem:
                bad.append(f"{item}: {problem}")
        if count:
            progress(f"verify: {what}: {count} read, {len(bad)} bad")
            results.append(Checked(what, count, bad))
    return results


def _raw_shards(layout: Layout) -> Iterator[tuple[str, str | None]]:
    from pipeline.shards import RawManifest, RawShardError, iter_samples

    if not storage.exists(layout.raw_manifest):
        return
    manifest = RawManifest.read(layout.raw)
    for shard, videos in manifest.shard_videos():
        uri = manifest.shard_uri(shard["name"])
        try:
            found = {sample["__key__"] for sample in iter_samples(uri)}
        except (RawShardError, OSError) as err:
            yield uri, first_line(err).removeprefix(f"{uri}: ")
            continue
        missing = [video["key"] for video in videos if video["key"] not in found]
        gone = (
            f"{len(missing)} samples the manifest lists are missing, e.g. {missing[0]}" if missing else None
        )
        yield uri, gone


def _latent_shards(layout: Layout) -> Iterator[tuple[str, str | None]]:
    from pipeline.latents import LatentStoreError, open_latents

    if not storage.exists(storage.join(layout.latents, "zarr.json")):
        return
    try:
        store = open_latents(layout.latents)
    except LatentStoreError as err:
        yield layout.latents, first_line(err)
        return
    for shard in range(store.num_shards):
        try:
            store.read_shard(shard)
            yield f"{layout.latents} shard {shard}", None
        except LatentStoreError as err:
            yield f"{layout.latents} shard {shard}", first_line(err).split(": ", 1)[-1]


def _checkpoints(layout: Layout) -> Iterator[tuple[str, str | None]]:
    from safetensors import safe_open
    from safetensors.torch import load

    for folder in (layout.trained_tokenizer, layout.trained_dynamics):
        weights = storage.join(folder, "model.safetensors")
        if not storage.exists(weights):
            continue
        try:
            if storage.is_local(weights):
                with safe_open(str(Layout.local(weights)), framework="pt") as tensors:
                    for name in tensors.keys():
                        tensors.get_tensor(name)
            else:  # on object storage: its bytes, parsed and every tensor made, as loading does
                load(storage.read_bytes(weights))
            yield weights, None
        except Exception as err:  # a truncated or overwritten file
            yield weights, f"unreadable ({first_line(err)})"


def _generated_clips(layout: Layout) -> Iterator[tuple[str, str | None]]:
    import zarr

    generations = storage.join(layout.root, "generations")
    for name in storage.list_names(generations):
        uri = storage.join(generations, name, "codes.zarr")
        if not storage.exists(storage.join(uri, "zarr.json")):
            continue
        codes = zarr.open_group(uri, mode="r")["codes"]
        for clip in range(codes.shape[0]):
            try:
                codes[clip]
                yield f"{uri} clip {clip}", None
            except Exception as err:  # zstd, blosc, whichever codec noticed
                yield f"{uri} clip {clip}", f"does not decode ({first_line(err)})"
