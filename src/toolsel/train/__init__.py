"""Training on MLX: the block-diffusion objective, batches, LoRA/full fine-tuning and the resumable loop."""
