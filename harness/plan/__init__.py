"""``qlora-plan``: a job's peak memory term by term, whether it fits on a device, the largest batch and
sequence that fit, and its predicted speed — from the model's config.json alone (``harness.plan.cli``)."""
