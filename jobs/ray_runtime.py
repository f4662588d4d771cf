"""Joining a Ray cluster, or starting an embedded local one bound to 127.0.0.1."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from jobs.config import RayConfig
from jobs.tracking import SUBMISSION_ENV


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[None]:
    """Use the Ray already initialised in this process, or start/join one for the block."""
    # Ray 2.60 switches token auth on by itself when it finds a token file; an
    # embedded local Ray must not depend on what happens to lie in ~/.ray.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        yield
        return
    # A submitted stage job's driver is told its cluster in RAY_ADDRESS and must join it. Elsewhere
    # RAY_ADDRESS is often the Jobs API URL a user exported for `ray job`: not for ray.init.
    address = cfg.address
    if not address and os.environ.get(SUBMISSION_ENV):
        address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        stop = ray.shutdown
    else:
        stop = _start_on_loopback(cfg)
    try:
        yield
    finally:
        stop()


# Ray turns a node IP of 127.0.0.1 into this host's reachable address (it expects other
# nodes to join), and its servers then listen on every interface. The switch it has for
# single-machine platforms (macOS, Windows: "clusters off") keeps the node IP on loopback,
# and with it GCS, raylet, workers and agents.
LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _start_on_loopback(cfg: RayConfig) -> Callable[[], None]:
    """Start a fresh embedded Ray that no other host can reach; return what stops it."""
    import ray
    from ray._private import ray_constants

    saved_env, saved_switch = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH] = "0"  # read by this process's Ray and by what it starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # read when Ray was imported, maybe before this
    try:
        # "local" always starts a fresh embedded Ray: a bare init() would join any
        # cluster this machine happens to run (it reads /tmp/ray/ray_current_cluster).
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )
        node_ip = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(node_ip).is_loopback:
            ray.shutdown()
            raise RuntimeError(f"the embedded Ray took node address {node_ip}, not loopback: refusing to run")
    finally:
        # a later ray.init(address=...) in this process must find its real address again
        ray_constants.ENABLE_RAY_CLUSTER = saved_switch
        if saved_env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = saved_env
    return ray.shutdown
