"""The PPO core shared by the teacher (MLP on privileged state) and, later, the student fine-tuning.

networks.py   actor-critic modules and the policy interface   storage.py  the rollout buffer
ppo.py        one PPO update, top to bottom                    runner.py   the collect-update-log loop
"""
