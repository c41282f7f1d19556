"""Training: optimizers, the loop over LoRA parameters, throughput and memory meters."""
