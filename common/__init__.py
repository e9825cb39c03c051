"""Pieces that several stages share: run-directory rules, metrics logging, policy evaluation."""
