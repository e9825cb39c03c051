def pytest_configure(config):
    # Isaac Lab 3.0's own spawners call its deprecated schema helpers: not ours to fix, and they bury the report.
    for kind in ("DeprecationWarning", "FutureWarning"):
        config.addinivalue_line("filterwarnings", f"ignore::{kind}:isaaclab")
        config.addinivalue_line("filterwarnings", f"ignore::{kind}:isaaclab_newton")
