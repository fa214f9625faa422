"""The transformer family: its model (model.py), its Hugging Face adapter (hf.py); its row is in models/families.py."""
