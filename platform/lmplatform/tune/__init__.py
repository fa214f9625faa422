"""Fine-tuning search with Ray Tune, one job per module: `config` (the search section),
`data` (what trials need), `trial` (one fine-tuning run), `space` (search space and
schedulers), `search` (the Tune run and its table), `promotion` (best checkpoint -> registry
-> `best`). The job: data.load_task_data -> search.run_search -> promotion.promote."""
