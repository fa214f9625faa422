"""The electra family: its model (model.py: generator + discriminator), its Hugging Face adapter (hf.py), its pretraining objective (pretraining.py); its row is in models/families.py."""
