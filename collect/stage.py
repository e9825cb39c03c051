"""``python pipeline.py stage=collect``: arrives with issue #5 (retry-until-success collection)."""

from common.rundir import NotYetAvailable


def run(cfg) -> dict:
    raise NotYetAvailable("collection (stage=collect) is still to come (issue #5)")
