"""Fine-tuning: supervised examples (SFT), full or LoRA, on the trainer of jobs/train."""
