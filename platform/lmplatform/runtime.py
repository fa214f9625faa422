"""Connecting to Ray: a cluster when there is one, else a local instance bound to 127.0.0.1."""

from __future__ import annotations

import os

# Ray resolves "127.0.0.1" to the machine's routable address and listens on every interface;
# with this switch off (read when `ray` is imported) a local instance stays on loopback.
# A job submitted to a real cluster connects to it through RAY_ADDRESS and is unaffected.
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def init_ray(
    num_cpus: int | None = None, quiet: bool = False, resources: dict[str, float] | None = None
):
    """Join the cluster this process runs in (ray job submit / RAY_ADDRESS) or start a local one."""
    if "RAY_ADDRESS" not in os.environ:
        for k, v in LOCAL_ONLY_ENV.items():
            os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return ray
    kwargs = dict(log_to_driver=not quiet, configure_logging=True, logging_level="WARNING")
    if "RAY_ADDRESS" in os.environ:
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(
            # "local": a new instance even when `ray start` left a cluster running on this
            # machine (ray.init() would silently join it); clusters are joined via RAY_ADDRESS
            address="local",
            num_cpus=num_cpus,
            resources=resources,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            **kwargs,
        )
    return ray


def ray_storage(output_dir: str, *parts: str) -> dict:
    """`storage_path` (+ `storage_filesystem`) for Ray Train/Tune's RunConfig under a job's
    output_dir, through the platform's one storage layer: a URI gets the same fsspec
    filesystem (endpoint, credentials) as every other read and write."""
    from lmplatform import storage

    uri = storage.join(output_dir, *parts)
    if storage.is_local(uri):
        return {"storage_path": uri}
    fs, path = storage.arrow_filesystem(uri)
    return {"storage_path": path, "storage_filesystem": fs}
