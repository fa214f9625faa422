"""The one training loop used by pretraining workers and fine-tuning trials."""
