"""Look after a model registry: list, show, export --hf, promote, rollback, gc.

python jobs/registry.py --registry registry list
python jobs/registry.py --registry s3://bucket/registry show sst2@best
"""

from lmplatform.cli.registry import main

if __name__ == "__main__":
    main()
