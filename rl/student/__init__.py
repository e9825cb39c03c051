"""The student policies: the memory-token history transformer and its MLP and LSTM baselines.

Shared by behaviour cloning (bc/), fine-tuning (finetune/) and evaluation (evaluation/), so they live
beside the PPO networks rather than inside one stage.
"""
