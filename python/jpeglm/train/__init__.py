"""Training: the loop, its config, batches, parallelism, memory planning."""
