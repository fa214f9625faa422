"""Check what makes Ray jobs fail late, before submitting: one line per problem, with the fix.

The same as the `lmplatform-preflight` console script: usage in lmplatform/cli/preflight.py.
"""

from lmplatform.cli.preflight import run

if __name__ == "__main__":
    run()
