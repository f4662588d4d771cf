"""Joining a Ray cluster, or starting an embedded local one bound to 127.0.0.1."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
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
    else:
        # "local" always starts a fresh embedded Ray: a bare init() would join any
        # cluster this machine happens to run (it reads /tmp/ray/ray_current_cluster).
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )
    try:
        yield
    finally:
        ray.shutdown()
