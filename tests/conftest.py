"""Shared fixtures: small videos the tests make themselves, good and bad."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np
import pytest

from common.environment import environment
from pipeline.video import encode_mp4

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The runs the tests track go to a store of this test session (the default, one store for all
# roots), never to the user's own ~/.stvideo or a server their MLFLOW_TRACKING_URI names
TRACKING_HOME = Path(tempfile.mkdtemp(prefix="stvideo-home-"))
os.environ["STVIDEO_HOME"] = str(TRACKING_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
atexit.register(shutil.rmtree, TRACKING_HOME, ignore_errors=True)
DEFAULT_TRACKING_URI = f"sqlite:///{TRACKING_HOME / 'mlflow.db'}"
REPO = Path(__file__).resolve().parents[1]
STVIDEO = [sys.executable, "-m", "jobs.cli"]


# A handful of videos split by a hash of their keys: with these fractions the fixtures' few
# videos put at least one in train and one in val, which is all the stages need when generate
# continues the val split (ingest refuses a split a later stage needs that would be empty).
FEW_VIDEOS = [
    "--set",
    "data.val_fraction=0.6",
    "--set",
    "data.test_fraction=0.1",
    "--set",
    "generate.split=val",
    "--set",
    "data.split_by=video",  # whole videos: these videos are too short to split by time
]


@pytest.fixture(autouse=True)
def _no_tracking_uri_left_behind():
    """MLflow's set_tracking_uri also exports MLFLOW_TRACKING_URI (for its subprocesses): a test
    that tracks in-process must not hand its server to the CLI runs of the tests after it, in
    whatever order they run (a worker of `make test` takes files in no fixed order)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def runs_of(root, tracking_uri: str = DEFAULT_TRACKING_URI) -> list:
    """The MLflow runs of one root (parent and stages), in every experiment of a store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return (
        client.search_runs(experiments, filter_string=f"tags.`stvideo.root` = '{root}'")
        if experiments
        else []
    )


# `make test` runs two files at a time (pytest-xdist), handing them out in this order: the files
# that take longest first (on a 2-core machine, two at a time: the two-node pipeline and
# test_pipeline 7-9 min each, the submitted pipeline 4-5), so that the short ones fill in
# around them and no worker is left alone with a long one at the end.
LONGEST_FIRST = [
    "test_cluster_object_storage.py",
    "test_pipeline.py",
    "test_submit_integration.py",
    "test_gpu_recipe.py",
    "test_bench_smoke.py",
    "test_tracking_outage.py",
    "test_encode_stage.py",
    "test_ingest_stage.py",
    "test_progress.py",
    "test_footage.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file stays in order


def untracked_tiny(root) -> list[str]:
    """CLI arguments: the tiny config into `root`, without MLflow."""
    return [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"root={root}",
        "--set",
        "tracking.enabled=false",
    ]


# Ports for the services the tests start, below the kernel's ephemeral ports (32768 and up:
# any outgoing connection may take one of those between our check and the service's bind) and
# above Ray's worker ports (10002-19999): 20000-31999, a range of 4,000 to each of the first
# three pytest-xdist workers (a fourth shares the first's).
PORTS_FROM, PORTS_PER_WORKER, PORT_RANGES = 20_000, 4_000, 3
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_next_port = PORTS_FROM + PORTS_PER_WORKER * (WORKER % PORT_RANGES)
_PORTS_END = _next_port + PORTS_PER_WORKER


def free_port(span: int = 1) -> int:
    """A port on 127.0.0.1 that nothing holds, and the `span - 1` after it (a Ray head's client
    server takes its GCS port + 1), never handed out twice in this session."""
    global _next_port
    while _next_port + span <= _PORTS_END:
        port, _next_port = _next_port, _next_port + span
        try:
            for offset in range(span):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("this test worker has used every port of its range")


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


@contextmanager
def local_service(script: str, state: Path, env: dict[str, str]) -> Iterator[int]:
    """Start a service by its infra/local script, yield its PID, stop it by that PID."""
    path = REPO / "infra" / "local" / script
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **env}
    started = subprocess.run(
        [str(path), "start", str(state)], env=full_env, capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((state / script.replace(".sh", ".pid")).read_text())
    try:
        yield pid
    finally:
        subprocess.run([str(path), "stop", str(state)], env=full_env, timeout=60)
        assert not alive(pid)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """A real Ray head on 127.0.0.1 (infra/local/ray-head.sh), 4 logical CPUs, shared by the session."""
    tmp_path = tmp_path_factory.mktemp("ray-head")
    env = ray_head_env(cpus=4)
    with local_service("ray-head.sh", tmp_path / "ray-state", env) as pid:
        yield {
            "address": f"127.0.0.1:{env['RAY_PORT']}",
            "dashboard": f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}",
            "pid": pid,
        }


def ray_head_env(cpus: int, **extra: str) -> dict[str, str]:
    """The environment of infra/local/ray-head.sh for a head on free ports, with a temp dir of
    its own: the heads that tests run at once must not take each other's address file."""
    temp_dir = tempfile.mkdtemp(prefix="stv-ray-", dir="/tmp")  # short: Ray's socket paths
    atexit.register(shutil.rmtree, temp_dir, ignore_errors=True)
    return {
        "RAY_TEMP_DIR": temp_dir,
        "RAY_PORT": str(free_port(span=2)),
        "RAY_DASHBOARD_PORT": str(free_port()),
        "RAY_DASHBOARD_AGENT_PORT": str(free_port()),
        "RAY_NUM_CPUS": str(cpus),
        **extra,
    }


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow server on 127.0.0.1 (infra/local/mlflow-server.sh): sqlite, artifacts on
    disk, shared by the session (a test that stops its server starts its own)."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    with local_service("mlflow-server.sh", tmp_path / "mlflow-state", {"MLFLOW_PORT": str(port)}) as pid:
        yield {"uri": f"http://127.0.0.1:{port}", "pid": pid}


def moving_square(num_frames: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [T, size, size, 3]: a bright square sliding across a dark frame."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    colour = rng.integers(128, 256, size=3)
    for t in range(num_frames):
        x = (t * 2) % (size - 8)
        frames[t, 8:16, x : x + 8] = colour
    return frames


def write_container(path: Path, frames: np.ndarray, codec: str, fps: int = 10) -> Path:
    """Write frames with PyAV into any container (webm, avi, mkv) by the path's extension."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def video_folder(tmp_path: Path) -> dict:
    """A folder with good videos in four containers and one of each bad kind.

    Returns {"path": folder, "good": {name: frames}, "bad": {name: regex for the reason}}.
    """
    folder = tmp_path / "videos"
    (folder / "nested").mkdir(parents=True)
    good = {}
    frames = moving_square(24, seed=1)
    (folder / "square.mp4").write_bytes(encode_mp4(frames, fps=10))
    good["square.mp4"] = frames
    frames = moving_square(22, seed=2)
    write_container(folder / "nested" / "clip.webm", frames, "libvpx-vp9")
    good["nested/clip.webm"] = frames
    frames = moving_square(20, seed=3)
    write_container(folder / "old.avi", frames, "mpeg4")
    good["old.avi"] = frames
    frames = moving_square(30, seed=4)
    write_container(folder / "movie.mkv", frames, "libx264")
    good["movie.mkv"] = frames

    valid = encode_mp4(moving_square(40, seed=5), fps=10)
    bad = {}
    (folder / "empty.mp4").write_bytes(b"")
    bad["empty.mp4"] = "empty file"
    (folder / "truncated.mp4").write_bytes(valid[: len(valid) // 2])
    # depending on where the cut falls, decord fails to open it or fails part-way
    bad["truncated.mp4"] = "not a readable video|decoding failed"
    damaged = bytearray(valid)
    rng = np.random.default_rng(0)
    for index in rng.integers(len(valid) // 3, len(valid), 400):
        damaged[index] = rng.integers(0, 256)
    (folder / "damaged.mp4").write_bytes(bytes(damaged))
    bad["damaged.mp4"] = "not a readable video|decoding failed"
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    bad["notes.mp4"] = "not a readable video"
    (folder / "short.mp4").write_bytes(encode_mp4(moving_square(8, seed=6), fps=10))
    bad["short.mp4"] = "fewer than one clip"
    (folder / "dangling.mp4").symlink_to(tmp_path / "does-not-exist.mp4")
    bad["dangling.mp4"] = "cannot read"
    (folder / "readme.txt").write_text("not a video extension: ignored, not rejected")
    return {"path": folder, "good": good, "bad": bad}


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 300 KiB tmpfs (Linux, as root); the test is skipped, saying why, where it cannot be made."""
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("a small tmpfs needs Linux and mount(8)")
    folder = tmp_path / "small"
    folder.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or made.returncode}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def disk_room(folder: Path, room_kib: int) -> None:
    """Resize the tmpfs at `folder` to what it holds now and `room_kib` more."""
    used_kib = (shutil.disk_usage(folder).used + 1023) // 1024
    resized = subprocess.run(
        ["mount", "-o", f"remount,size={used_kib + room_kib}k", str(folder)], capture_output=True, text=True
    )
    assert resized.returncode == 0, resized.stderr


def scene(width: int, height: int, num_frames: int, seed: int, pan: int = 2) -> np.ndarray:
    """uint8 [T, H, W, 3]: a camera panning over a smooth colourful landscape, with a disc
    crossing it: what footage looks like to a tokenizer, made here and now."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    span = width + pan * num_frames
    coarse = rng.integers(0, 256, size=(6, 10, 3), dtype=np.uint8)
    world = np.asarray(Image.fromarray(coarse).resize((span, height), Image.BICUBIC))
    frames = np.stack([world[:, t * pan : t * pan + width] for t in range(num_frames)]).copy()
    radius = max(4, min(width, height) // 8)
    ys, xs = np.ogrid[:height, :width]
    for t in range(num_frames):
        cx, cy = int(width * (0.2 + 0.6 * t / num_frames)), height // 2
        frames[t][(xs - cx) ** 2 + (ys - cy) ** 2 < radius**2] = (250, 240, 60)
    return frames


@pytest.fixture
def footage_folder(tmp_path: Path) -> dict:
    """Real-looking footage of the sizes and rates people bring: 1280x720 at 30 fps, 400x300 at
    25, a 480x360 one at 20 fps with a hard cut half-way, a portrait 240x400, and one too short
    for a clip. Returns {"path", "cut_at_s": the cut's time, "short": name}."""
    folder = tmp_path / "footage"
    folder.mkdir()
    (folder / "wide.mp4").write_bytes(encode_mp4(scene(1280, 720, 180, seed=1, pan=6), fps=30))
    (folder / "landscape.mp4").write_bytes(encode_mp4(scene(400, 300, 150, seed=2), fps=25))
    cut = np.concatenate([scene(480, 360, 80, seed=3), scene(480, 360, 80, seed=4)])
    (folder / "cut.mp4").write_bytes(encode_mp4(cut, fps=20))
    # portrait: red sky and blue water in the top and bottom fifth, which a centre crop cuts away
    portrait = scene(240, 400, 150, seed=5, pan=1)
    portrait[:, :80], portrait[:, 320:] = (220, 30, 30), (30, 30, 220)
    write_container(folder / "portrait.mkv", portrait, "libx264", fps=25)
    (folder / "short.mp4").write_bytes(encode_mp4(scene(320, 240, 10, seed=6), fps=25))
    return {"path": folder, "cut_at_s": 4.0, "short": "short"}


def start_stvideo(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start the real CLI in a session of its own, so that it can be killed with all it starts."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.Popen([*STVIDEO, *args], cwd=REPO, start_new_session=True, text=True, env=env, **popen)


def kill_family(process: subprocess.Popen) -> None:
    """SIGKILL a process from `start_stvideo` and every process it started."""
    import signal

    import psutil

    family = [process, *psutil.Process(process.pid).children(recursive=True)]
    os.killpg(process.pid, signal.SIGKILL)
    for member in family:  # Ray's daemons may have left the process group
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass


def kill_when(args: list[str], folder: Path, pattern: str, count: int, timeout: float = 300) -> int:
    """Start `stvideo ARGS`, SIGKILL it and every process it started once `count` files match
    `pattern` in `folder`; return how many matched at the kill. Fails, saying why, when the
    command ends on its own or the files do not appear in time: a kill that never happened."""
    errors = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the command
    victim = start_stvideo(*args, stdout=subprocess.DEVNULL, stderr=errors)
    deadline = time.monotonic() + timeout
    while len(list(folder.glob(pattern))) < count:
        if victim.poll() is not None:
            errors.seek(0)
            raise AssertionError(
                f"stvideo {' '.join(args[:1])} exited ({victim.returncode}) before {count} {pattern} "
                f"in {folder}: {errors.read()[-2000:]}"
            )
        if time.monotonic() > deadline:
            kill_family(victim)
            raise AssertionError(f"no {count} {pattern} in {folder} within {timeout:.0f} s")
        time.sleep(0.02)
    kill_family(victim)
    victim.wait(timeout=30)
    return len(list(folder.glob(pattern)))


def torchrun_two(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run tests/helpers/SCRIPT under torchrun with 2 processes on 127.0.0.1 (gloo on a CPU)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(REPO / "tests" / "helpers" / script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def run_stvideo(*args: str, cwd: Path = REPO, timeout: int = 600, env: dict | None = None):
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [*STVIDEO, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def run_stvideo_listening(
    *args: str, timeout: int = 600, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, set]:
    """Run the real CLI as `run_stvideo` does, and every 0.2 s note the sockets that it and
    every process it started listen on: {(process name, ip, port)}."""
    import tempfile

    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = start_stvideo(*args, stdout=out, stderr=err, env=env)
        listening: set[tuple[str, str, int]] = set()
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            try:
                listening |= listening_sockets(process.pid)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        if process.poll() is None:
            kill_family(process)
        process.wait(timeout=60)
        out.seek(0), err.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())
        result.pid = process.pid  # the CLI's own process: what tests tell apart from Ray's workers
        return result, listening


def listening_sockets(pid: int) -> set[tuple[str, str, int]]:
    """{(process name, ip, port)} that process `pid` and every process under it listen on
    (TCP listeners and UDP sockets)."""
    import psutil

    root = psutil.Process(pid)
    listening = set()
    for member in [root, *root.children(recursive=True)]:
        try:
            for sock in member.net_connections(kind="inet"):
                if sock.status == psutil.CONN_LISTEN or sock.type == socket.SOCK_DGRAM:
                    listening.add((member.name(), sock.laddr.ip, sock.laddr.port))
        except psutil.Error:  # gone, or not ours to look into
            pass
    return listening


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also written as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    import ipaddress

    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def build_raw(root: Path, num_videos: int = 36, per_shard: int = 12, seed: int = 0) -> list[str]:
    """Raw shards of generated Moving MNIST under root/raw, built without Ray (fast fixtures)."""
    from pipeline.shards import ShardSummary, ShardTask, build_shard, plan_shards, write_manifest
    from pipeline.sources import MovingMnistSource

    source = MovingMnistSource(num_videos=num_videos, fps=10, seed=seed)
    raw = str(root / "raw")
    reports = [
        build_shard(ShardTask(index, chunk, raw, "fixture", min_frames=20), source)
        for index, chunk in enumerate(plan_shards(source.items(), per_shard))
    ]
    write_manifest(raw, [ShardSummary.of(r) for r in reports], "fixture", {"kind": "moving-mnist"})
    return [f"{raw}/{report.name}" for report in reports]


@pytest.fixture(scope="session")
def raw_shards(tmp_path_factory) -> list[str]:
    return build_raw(tmp_path_factory.mktemp("raw-fixture"))


@contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    """moto's S3-compatible server on 127.0.0.1 with `bucket` made, started and stopped by PID;
    yields the environment that reaches it (botocore reads AWS_ENDPOINT_URL)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        import s3fs

        s3fs.S3FileSystem(
            key="test",
            secret="test",
            client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL"]},
            skip_instance_cache=True,
        ).mkdir(bucket)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def s3_server():
    """moto's S3 server on 127.0.0.1, this process's environment pointed at it."""
    import s3fs

    with moto_s3("latents-bucket") as env, environment(env):
        s3fs.S3FileSystem.clear_instance_cache()
        yield "s3://latents-bucket"


def reachable_ip() -> str:
    """This host's address on its network (the one Ray gives a node that is not loopback-only).
    A UDP socket 'connected' to a TEST-NET address sends nothing; it only picks the route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.254", 9))
        return sock.getsockname()[0]


@contextmanager
def ray_worker_node(head: str, temp_dir: Path, cpus: int, resources: dict, env: dict) -> Iterator[int]:
    """A second Ray node on this machine joining `head`: its own temp dir (logs, sockets), its own
    custom resources so work can be placed on it; stopped by its PID and process group."""
    import json
    import signal

    temp_dir.mkdir(parents=True, exist_ok=True)
    command = [str(Path(sys.executable).parent / "ray"), "start", "--address", head, "--block"]
    command += ["--disable-usage-stats", "--num-cpus", str(cpus), "--resources", json.dumps(resources)]
    command += ["--temp-dir", str(temp_dir), "--dashboard-agent-listen-port", str(free_port())]
    with (temp_dir / "node.log").open("w") as log:
        node = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield node.pid
    finally:
        node.send_signal(signal.SIGTERM)  # the leader tears down what it started
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(node.pid, signal.SIGKILL)  # whatever of its group is left
        except ProcessLookupError:
            pass
        node.wait(timeout=30)
