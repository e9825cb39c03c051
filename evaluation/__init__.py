"""Stage ``eval``: Successes / Mean reward / Mean episode length per (policy device, sim device)."""
