"""The model registry: the on-disk (or object-store) layout of models and their versions (store.py), and Hugging Face checkpoints taken in as registry models (hub.py)."""
