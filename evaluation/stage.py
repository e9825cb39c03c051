"""``python pipeline.py stage=eval``: arrives with the evaluation issue (the teacher stage already
prints the same table for the teacher)."""

from common.rundir import NotYetAvailable


def run(cfg) -> dict:
    raise NotYetAvailable("student evaluation (stage=eval) is still to come (the eval issue)")
