"""Training data: the data-directory setting, prompt format, synthetic task, instruction sets, batching."""
