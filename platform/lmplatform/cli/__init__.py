"""The jobs' entry points: `lmplatform-<job>` console scripts and `python jobs/<job>.py` both
run `lmplatform.cli.<job>:run`. Each parses its arguments, validates the config (clear
one-line errors, exit 2) and calls the library; the work itself lives in the library modules."""
