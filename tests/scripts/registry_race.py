"""One contender of the registry race test: wait for a shared instant, publish, promote.

python tests/scripts/registry_race.py ROOT MODEL_FOLDER VALUE START_TIME
"""

import json
import sys
import time

from lmplatform.registry.store import Registry

root, folder, value, start = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
reg = Registry(root)
meta = {"kind": "task", "metric": "accuracy", "value": value, "data_fingerprint": {"dev": "d"}}
time.sleep(max(0.0, start - time.time()))
version = reg.publish("tasks", "race", folder, meta)
promoted, previous = reg.promote("race", version)
print(json.dumps({"version": version, "value": value, "promoted": promoted}))
