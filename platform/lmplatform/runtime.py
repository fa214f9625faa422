"""Connecting to Ray: a cluster when there is one, else a local instance bound to 127.0.0.1,
with token authentication on either way.

python -m lmplatform.runtime ensure-token   # make sure a Ray token exists; print where it is
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

# Ray resolves "127.0.0.1" to the machine's routable address and listens on every interface;
# with this switch off (read when `ray` is imported) a local instance stays on loopback.
# A job submitted to a real cluster connects to it through RAY_ADDRESS and is unaffected.
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

AUTH_MODE = "RAY_AUTH_MODE"


def token_location() -> str | None:
    """Where Ray will read its auth token from, in Ray's own order (the RAY_AUTH_TOKEN
    variable, the file RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token); None if there is none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "the RAY_AUTH_TOKEN variable"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if named:
        # Ray takes a named file over the default one, and fails if it is missing or empty
        return named if _non_empty(Path(named)) else None
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if _non_empty(default) else None


def _non_empty(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def ensure_token() -> tuple[str, bool]:
    """A token where Ray looks for one: the existing one, else a new ~/.ray/auth_token (or the
    file RAY_AUTH_TOKEN_PATH names), readable by this user only. Returns (where, created).
    Ray makes one itself for a new local instance, but with the umask's permissions and not
    atomically; two first runs at once here agree on one token."""
    found = token_location()
    if found:
        return found, False
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        os.link(tmp, path)  # whole or absent, and never over a token another process made
        created = True
    except FileExistsError:
        created = False
    finally:
        tmp.unlink(missing_ok=True)
    return str(path), created


def use_token_auth(starting_local: bool) -> None:
    """Token authentication unless RAY_AUTH_MODE says otherwise. A local instance gets a token
    made for it; a cluster joined through RAY_ADDRESS is asked with the token when one exists
    (Ray itself turns token mode on for an explicit address only when told to)."""
    mode = os.environ.get(AUTH_MODE)
    if mode and mode.lower() != "token":
        return  # an explicit opt-out
    if starting_local:
        ensure_token()
    elif token_location() is None:
        return  # a cluster without auth, or a token we cannot see: Ray's own error names it
    os.environ[AUTH_MODE] = "token"
    if "ray._raylet" in sys.modules:  # Ray read the mode when imported: make it read it again
        from ray._raylet import Config

        Config.initialize("")


def setup_process() -> None:
    """What must be in the environment before `ray` is imported (Ray reads it then): a Ray on
    this machine stays on loopback, token authentication, the job's console settings. Job entry
    points call it first (`cli.run`); `init_ray` again, for scripts that do not go through them."""
    from lmplatform import console

    address = ray_address()
    if address is None:
        os.environ.pop("RAY_ADDRESS", None)  # an empty one: nothing Ray starts may read it
    if address is None or _on_loopback(address):
        for k, v in LOCAL_ONLY_ENV.items():
            os.environ.setdefault(k, v)
    use_token_auth(starting_local=address is None)
    console.setup_process()


def ray_address() -> str | None:
    """The cluster RAY_ADDRESS names; None when it is unset or empty (`RAY_ADDRESS= cmd`, a
    common way to "unset" it, means a local Ray, not an address Ray cannot parse)."""
    return os.environ.get("RAY_ADDRESS") or None


def init_ray(
    num_cpus: int | None = None, quiet: bool = False, resources: dict[str, float] | None = None
):
    """Join the cluster this process runs in (ray job submit / RAY_ADDRESS) or start a local one."""
    from lmplatform import console

    joining = ray_address() is not None
    setup_process()
    import ray

    if ray.is_initialized():
        return ray
    kwargs = dict(
        log_to_driver=not quiet,
        configure_logging=True,
        logging_level="WARNING",
        runtime_env={"env_vars": console.worker_env_vars()},  # every worker's console settings
    )
    if joining:
        ray.init(address=ray_address(), **kwargs)
    else:
        ray.init(
            # "local": a new instance even when `ray start` left a cluster running on this
            # machine (ray.init() would silently join it); clusters are joined via RAY_ADDRESS
            address="local",
            num_cpus=num_cpus,
            resources=resources,
            # the dashboard serves Ray's State API, which Ray Train's placement-group cleaner
            # polls: without it the cleaner warned every second of every training run
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            **kwargs,
        )
    return ray


def _on_loopback(address: str) -> bool:
    """RAY_ADDRESS names a Ray on this machine's loopback (127.0.0.1:6379, localhost:6379):
    without the local-only switch Ray would look for it at the machine's routable address."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def launcher_node_types() -> dict[str, dict]:
    """The node types the cluster launcher may add (its bootstrap config, on the head); empty
    on a cluster it does not manage."""
    import yaml

    p = Path.home() / "ray_bootstrap_config.yaml"
    try:
        return (yaml.safe_load(p.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError):
        return {}


def cluster_can_grow(resource: str) -> bool:
    """More of `resource` can come: the launcher may add nodes of a type that has it."""
    return any(
        t.get("max_workers", 0) > 0 and (t.get("resources") or {}).get(resource, 0) > 0
        for t in launcher_node_types().values()
    )


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


def main(argv: list[str]) -> int:
    if argv != ["ensure-token"]:
        print("usage: python -m lmplatform.runtime ensure-token", file=sys.stderr)
        return 2
    where, created = ensure_token()
    print(f"Ray token authentication: {'created' if created else 'using'} the token in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
