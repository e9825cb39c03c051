"""Stage ``bc``: behaviour cloning of the history transformer."""
