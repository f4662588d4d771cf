"""Joining a Ray cluster, or starting an embedded local one bound to 127.0.0.1."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from common import logs
from jobs.config import RayConfig
from jobs.tracking import SUBMISSION_ENV
from pipeline.decoders import DECODER_ENV

log = logs.get("ray")
# set by Ray's job supervisor in every job's driver (beside RAY_ADDRESS, the cluster's GCS)
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@contextmanager
def ray_data(cfg: RayConfig, num_gpus: float) -> Iterator[tuple]:
    """Ray Data in a `ray_session`: yields the `ray.data` module and the GPUs each actor takes
    (`num_gpus`, none on a cluster without GPUs). Its own progress bars are off (a stage draws one
    bar, counting what it makes) and our loggers keep their levels, which importing it resets."""
    with ray_session(cfg):
        import ray
        import ray.data

        logs.configure()
        ray.data.DataContext.get_current().enable_progress_bars = False
        # ...which Ray Data would then warn about in every stage, pointing at the switch we turned
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        yield ray.data, (num_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0)


def cluster_address(cfg: RayConfig) -> tuple[str | None, str]:
    """The cluster to join and why, or (None, why) for an embedded one.

    `ray.address` wins. A Ray job's driver (plain `ray job submit`, or `stvideo submit`) joins
    the cluster its job runs on, which Ray names in RAY_ADDRESS. Elsewhere RAY_ADDRESS names a
    cluster too, unless it is the Jobs API URL (http://...) a user exported for `ray job`."""
    if cfg.address:
        return cfg.address, "ray.address"
    named = os.environ.get("RAY_ADDRESS", "")
    if os.environ.get(RAY_JOB_ENV) or os.environ.get(SUBMISSION_ENV):
        return named or "auto", "the cluster of this Ray job"
    if named and not named.startswith(("http://", "https://")):
        return named, "RAY_ADDRESS"
    return None, "no cluster named (ray.address, RAY_ADDRESS)"


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Use the Ray already initialised in this process, or join/start one for the block, and
    say which."""
    # Ray 2.60 switches token auth on by itself when it finds a token file; an
    # embedded local Ray must not depend on what happens to lie in ~/.ray.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        yield
        return
    address, why = cluster_address(cfg)
    if address:
        # a head on this host's loopback (infra/local/ray-head.sh) has node IP 127.0.0.1:
        # a driver that took the host's reachable address would wait for a raylet forever
        with loopback_node(enabled=_is_loopback_address(address)):
            ray.init(address=address, logging_level=logging.WARNING, runtime_env=_passed_on())
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        log.info(f"ray: joined the cluster at {address} ({why}; {nodes} nodes)")
    else:
        with loopback_node():
            # "local" always starts a fresh embedded Ray: a bare init() would join any
            # cluster this machine happens to run (it reads /tmp/ray/ray_current_cluster).
            ray.init(
                address="local",
                num_cpus=cfg.num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                _node_ip_address="127.0.0.1",
                # no runtime_env: the embedded raylet, and every worker it starts, inherits this
                # process's environment (decoder, log level); one would cost each worker a
                # fresh start instead of a pre-started one (0.5 s per task or actor)
            )
        node_ip = ray.util.get_node_ip_address()
        if not _is_loopback_address(node_ip):
            ray.shutdown()
            raise RuntimeError(f"the embedded Ray took node address {node_ip}, not loopback: refusing to run")
        cpus = int(ray.cluster_resources().get("CPU", 0))
        log.info(f"ray: started an embedded Ray on 127.0.0.1 with {cpus} CPUs ({why})")
    try:
        yield
    finally:
        ray.shutdown()


# what a stage's tasks and actors must see as its driver does, on any node
PASSED_ON = (DECODER_ENV, logs.LEVEL_ENV)


def _passed_on() -> dict | None:
    """The driver's decoder and log level, as the runtime env of everything it starts. Within a
    Ray job the job's own runtime env (working_dir, submit.env) is kept: these are added to it."""
    env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
    return {"env_vars": env} if env else None


# Ray turns a node IP of 127.0.0.1 into this host's reachable address (it expects other
# nodes to join), and its servers then listen on every interface. The switch it has for
# single-machine platforms (macOS, Windows: "clusters off") keeps the node IP on loopback,
# and with it GCS, raylet, workers and agents.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_node(enabled: bool = True) -> Iterator[None]:
    """While the block runs, this process's Ray (and what it starts) takes 127.0.0.1 as the
    node address; a later ray.init(address=...) to a remote cluster finds its real one again."""
    if not enabled:
        yield
        return
    from ray._private import ray_constants

    saved_env, saved_switch = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH] = "0"  # read by the processes Ray starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # read when Ray was imported, maybe before this
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_switch
        if saved_env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = saved_env


def _is_loopback_address(address: str) -> bool:
    """ "127.0.0.1", "127.0.0.1:6379", "ray://localhost:10001", "[::1]:6379", "::1" -> True."""
    host = address.split("://")[-1]
    if not _is_ip(host):
        host = urlsplit("//" + host).hostname or host
    return host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
