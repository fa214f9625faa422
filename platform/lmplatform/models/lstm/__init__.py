"""The lstm family: its model (model.py); its row is in models/families.py."""
