"""The pretraining stage: prepare (tokenizer + example shards), the Ray Train run, export to the registry."""
