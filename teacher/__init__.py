"""Stage ``teacher``: the privileged policy that demonstrations come from."""
