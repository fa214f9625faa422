"""Data: sources, the embedded sample, and pretraining examples."""
