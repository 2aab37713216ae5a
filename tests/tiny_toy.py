"""Settings of the tiny toy2d runs the tests train: a small toy teacher (trained in seconds into the test's
cache_dir), and nothing a test does not look at (no W&B, progress bar, checkpoints or diagnostics)."""
QUIET = ["wandb=disabled", "progress_bar=false", "checkpoint_every=0", "diagnostics_every=0"]
TINY_TOY = ["teacher={steps: 20, data_size: 1024, hidden: 32}", "batch_size=16", "eval_samples=64", *QUIET]
