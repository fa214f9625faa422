"""Pretrain, fine-tune and serve language models on Ray."""
