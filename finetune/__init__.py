"""Stage ``finetune``: PPO fine-tuning of the student."""
