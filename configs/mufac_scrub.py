"""MUFAC (paper splits): SCRUB (protocol §5) beside the original; the same
as configs/paper.py:mufac,original,scrub."""

from configs import paper


def get_config():
  return paper.get_config('mufac,original,scrub')
