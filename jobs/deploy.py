"""Deploy the Serve application (every promoted task; fill-mask / generate if configured).

The same as the `lmplatform-deploy` console script: usage in lmplatform/cli/deploy.py.
"""

from lmplatform.cli.deploy import run

if __name__ == "__main__":
    run()
