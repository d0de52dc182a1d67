"""The service as a Ray Serve application: every replica runs the app of `service.create_app`, lifespan
included (models load, warm up, batch), behind Serve's HTTP proxy; Serve adds replicas by load.

    python -m service.ray_serve deploy/ray/serve.yaml   # a loopback cluster of this machine, 127.0.0.1:8000
    serve deploy deploy/ray/serve.yaml                   # onto a running cluster (KubeRay: deploy/kuberay/)

Settings are the service's own (service/settings.py): environment variables of the replica (the config's
`runtime_env.env_vars`), overridden by the application's `args: {settings: {...}}`.
"""

import argparse
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import serve

from backbone.flags import FlagParser
from service.app import create_app
from service.settings import Settings

DEPLOYMENT_NAME = "resdet"
# Fractional by default: a redeploy in place starts the new replicas before it stops the old ones, so
# whole CPUs (1 replica of 2 CPUs -> 2 replicas on a 2-CPU node) wait forever for CPUs the old ones hold.
REPLICA_CPUS = 0.5
AUTOSCALING = {
    "min_replicas": 1,
    "initial_replicas": 1,
    "max_replicas": 4,
    # a replica batches up to MAX_BATCH (8) images and queues MAX_QUEUE (64): scale before the queue fills
    "target_ongoing_requests": 16,
    "upscale_delay_s": 10,
    "downscale_delay_s": 120,  # a replica's model load is seconds: do not drop one between bursts
}


@serve.ingress()
class ResdetReplica:
    """One replica: the service's FastAPI app built by its factory, with these settings overrides."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def __serve_build_asgi_app__(self):
        # built here, in the replica, so the replica's environment fills what the overrides leave out
        return create_app(Settings(**self.settings))


def deployment(
    settings: dict[str, Any] | None = None,
    *,
    num_cpus: float = REPLICA_CPUS,
    autoscaling: dict[str, Any] | None = None,
) -> serve.Application:
    """The application: ResdetReplica with its resources and autoscaling, bound to the settings overrides."""
    options = {"ray_actor_options": {"num_cpus": num_cpus}, "autoscaling_config": autoscaling or AUTOSCALING}
    return serve.deployment(ResdetReplica, name=DEPLOYMENT_NAME, **options).bind(settings or {})


def build_app(args: dict[str, Any]) -> serve.Application:
    """The config file's entry point (`import_path: service.ray_serve:build_app`); `args.settings` are
    settings overrides, checked here so that a misspelled or invalid one fails the deploy in one line."""
    unknown = set(args) - {"settings"}
    if unknown:
        raise ValueError(f"service.ray_serve:build_app takes args.settings only, got {sorted(unknown)}")
    settings = dict(args.get("settings") or {})
    misspelled = set(settings) - set(Settings.model_fields)
    if misspelled:
        raise ValueError(f"args.settings: no such setting {sorted(misspelled)} (service/settings.py)")
    return deployment(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="python -m service.ray_serve", description=__doc__)
    parser.add_argument("config", type=Path, help="A Serve config file, e.g. deploy/ray/serve.yaml.")
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs the local node offers (default: all).")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """`serve run CONFIG` on a loopback cluster that this process starts, owns and stops (Ctrl-C)."""
    args = build_parser().parse_args(argv)
    if not args.config.is_file():
        raise SystemExit(f"error: {args.config} is not a file (a Serve config such as deploy/ray/serve.yaml)")
    from ray.serve.scripts import cli

    from detection.ray_local import local_cluster

    with local_cluster(num_cpus=args.num_cpus or os.cpu_count()), contextlib.suppress(KeyboardInterrupt):
        # serve run joins the cluster this process is connected to, and blocks until interrupted
        cli.main(args=["run", str(args.config)], standalone_mode=False)
    serve.shutdown()


if __name__ == "__main__":
    main()
