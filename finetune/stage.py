"""``python pipeline.py stage=finetune``: arrives with the fine-tuning issue."""

from common.rundir import NotYetAvailable


def run(cfg) -> dict:
    raise NotYetAvailable("fine-tuning (stage=finetune) is still to come (the fine-tuning issue)")
