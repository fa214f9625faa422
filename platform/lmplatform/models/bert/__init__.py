"""The bert family: its model (model.py), its Hugging Face adapter (hf.py), its pretraining objective (pretraining.py); its row is in models/families.py."""
