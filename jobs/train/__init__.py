"""The trainer: torchrun processes that train a model with DDP or FSDP2 and resume by themselves."""
