"""A Ray cluster inside this process, bound to loopback: what `detection.predict --engine ray` starts
without --address, and what the Ray tests and bench/ray_scaling.py run on.

Ray binds the machine's network address by default, counts usage, and since 2.5x writes an auth token
to ~/.ray on a new local cluster; here every node is 127.0.0.1, usage stats are off, auth is off (nothing
leaves the machine), and every file lives in a short temp folder of the cluster's own (Unix socket paths
must stay under 108 bytes). The cluster is owned by this process and shut down by it, never by
`ray stop`, which would end every Ray process of the machine, other users' included.
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

LOOPBACK = "127.0.0.1"
# Read by ray when it is imported (ray_constants) and inherited by every process the cluster starts.
LOOPBACK_ENVIRONMENT = {
    # with it off, Ray takes 127.0.0.1 as the node's own address instead of asking the network
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # a local cluster otherwise generates a token and saves it in the home folder
    "RAY_AUTH_MODE": "disabled",
}
DEFAULT_OBJECT_STORE_BYTES = 300 * 1024 * 1024  # ample for file names and JSON records


def import_ray():
    """ray, imported under the loopback environment (it reads part of it once, at import)."""
    os.environ.update(LOOPBACK_ENVIRONMENT)
    try:
        import ray
        from ray._private import ray_constants
    except ImportError:
        raise ImportError("the Ray engine needs Ray: pip install 'resdet[ray]'") from None
    # Imported earlier by someone else, ray read the flag without our environment: the node address would be
    # the machine's network address (checked by the tests: every node is 127.0.0.1).
    ray_constants.ENABLE_RAY_CLUSTER = False
    return ray


@dataclass
class LocalCluster:
    """A running loopback cluster: `cluster` (ray.cluster_utils.Cluster), its `address` and `temp_dir`."""

    cluster: Any
    temp_dir: str
    workers: list = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, *, num_cpus: float, num_gpus: int = 0, object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES):
        """One more node on this machine (a separate raylet): what a test removes to lose a node."""
        node = self.cluster.add_node(**node_options(num_cpus=num_cpus, num_gpus=num_gpus,
                                                    object_store_bytes=object_store_bytes))  # fmt: skip
        self.workers.append(node)
        return node

    def node_addresses(self) -> list[str]:
        """The address each alive node reports, as the cluster's own table holds it."""
        ray = import_ray()
        return [node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]]


def node_options(*, num_cpus: float, num_gpus: int, object_store_bytes: int) -> dict[str, Any]:
    return {
        "node_ip_address": LOOPBACK,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "object_store_memory": object_store_bytes,
    }


@contextlib.contextmanager
def local_cluster(
    *, num_cpus: float, num_gpus: int = 0, object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES
) -> Iterator[LocalCluster]:
    """Start a head node on 127.0.0.1, connect this process to it, and shut both down on the way out."""
    ray = import_ray()
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="rdray-")
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir  # Ray's "current cluster" address file goes here too, not /tmp/ray
    cluster = None
    try:
        head = node_options(num_cpus=num_cpus, num_gpus=num_gpus, object_store_bytes=object_store_bytes)
        ray_dir = os.path.join(temp_dir, "ray")  # where Ray looks for it under RAY_TMPDIR
        os.mkdir(ray_dir)
        head_args = {**head, "temp_dir": ray_dir, "include_dashboard": False}
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        ray.init(address=cluster.address, log_to_driver=False)
        yield LocalCluster(cluster=cluster, temp_dir=temp_dir)
    finally:
        try:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
        finally:
            if previous is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = previous
            shutil.rmtree(temp_dir, ignore_errors=True)
