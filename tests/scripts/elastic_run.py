"""Elastic pretraining on a two-node local cluster (run by tests/pretraining/test_elastic.py in its own process).

Ray 2.60's elastic policy counts workers from the nodes' resources, not from what other actors
hold, so a node joining mid-run is the faithful way to give a run room to grow. Each worker
asks for one `slot`; the head has one, the second node (added once the run has three checkpoints)
brings another.

    python tests/scripts/elastic_run.py <workdir> <config> [key=value …]
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "platform"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fault hooks

from ray.cluster_utils import Cluster  # noqa: E402

import faults  # noqa: E402
from lmplatform.config import load_config  # noqa: E402
from lmplatform.pretraining.config import PretrainJobConfig  # noqa: E402


def main() -> None:
    workdir, config, *overrides = sys.argv[1:]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "resources": {"slot": 1},
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
        },
    )
    import ray

    ray.init(address=cluster.address, log_to_driver=True, logging_level="WARNING")
    from lmplatform.pretraining.run import run_pretraining

    job = load_config(PretrainJobConfig, config, overrides)
    metrics = Path(workdir) / job.name / "metrics.jsonl"
    grow_by = 3 * job.train.checkpoint_every  # the node joins once the run is past this step
    # one worker waits a checkpoint interval later until the resize comes (a fast CPU would
    # otherwise finish every step before Ray notices the node)
    faults.picklable_by_value()
    hold = faults.HoldUntilGrown(grow_by + job.train.checkpoint_every + 1, seconds=300)

    out: dict = {}

    def train():  # in a thread: Ray adds nodes only from the main thread
        try:
            out["result"] = run_pretraining(job, callbacks=[hold])[1]
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    t = threading.Thread(target=train, daemon=True)
    t.start()
    deadline = time.time() + 300
    while t.is_alive() and time.time() < deadline:
        if metrics.exists() and any(
            # past the third checkpoint: a resize from the first one came before the loss had
            # moved far enough for the test to tell carried-over weights from fresh ones
            json.loads(line)["step"] > grow_by
            for line in metrics.read_text().splitlines()
        ):
            break
        time.sleep(0.5)
    cluster.add_node(num_cpus=1, resources={"slot": 1}, node_ip_address="127.0.0.1")
    print("[elastic test] second node added", flush=True)
    t.join()
    if "error" in out:
        raise out["error"]
    result = out["result"]
    print(json.dumps({"final": result.metrics}), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
