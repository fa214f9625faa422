"""The resumable pipeline (run.py, its config.py and report.py) and the checks before any work (preflight.py)."""
