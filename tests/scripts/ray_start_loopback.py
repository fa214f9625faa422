"""`ray start` for a second node on this machine, kept on loopback.

Ray's CLI refuses `ray start --address` while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (the switch that
keeps a local Ray on 127.0.0.1), and with the switch on it resolves 127.0.0.1 to the machine's
routable address and joins through that. Tests must bind only to loopback, so this runs the
unchanged CLI with the switch off for every process it starts and only its own multi-node check
and local-address lookup answered for loopback.

python tests/scripts/ray_start_loopback.py --address=127.0.0.1:PORT [other `ray start` flags]
"""

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by the raylet and workers

import ray._private.ray_constants as ray_constants  # noqa: E402
import ray._private.services as services  # noqa: E402
from ray.scripts import scripts  # noqa: E402

ray_constants.ENABLE_RAY_CLUSTER = True  # lets `--address` through the CLI's check
services.get_node_ip_address = lambda address=None: "127.0.0.1"

sys.argv = ["ray", "start", "--node-ip-address=127.0.0.1", *sys.argv[1:]]
scripts.main()
