"""``python pipeline.py stage=bc``: arrives with the behaviour-cloning issue."""

from common.rundir import NotYetAvailable


def run(cfg) -> dict:
    raise NotYetAvailable("behaviour cloning (stage=bc) is still to come (the BC issue after #5)")
