"""Training throughput and memory: the standard transformers + bitsandbytes + peft path vs qlora-bench,
each as a fraction of this machine's training limit (measured matmul rate / FLOPs per token).

``python -m benchmarks.perf`` (from the checkout root). Modules: ``training_paths`` (the training paths,
built from the job's stages in ``harness.recipe``, each run in its own process so peak memory is per path),
``standard_path`` (the transformers + bitsandbytes + peft path they are compared against), ``measure``
(matmul rate, FLOPs per token, step clock, memory fields), ``render`` (the Markdown report), ``__main__``
(the driver). Nothing here is a test: it asserts nothing about time. Run it under
``flock /tmp/qlora-heavy.lock`` on shared machines.
"""
