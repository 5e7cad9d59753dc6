"""The old home of `ModelCheckpoint`, now `jdnn.checkpoint.callback` (imports run one way:
`jdnn.checkpoint` builds on `jdnn.train`).

Kept only while `jdnn/train/__init__.py` still re-exports `ModelCheckpoint` from here: once it
no longer does (`jdnn.ModelCheckpoint` and `jdnn.checkpoint.ModelCheckpoint` are the names to
use), this module goes, and with it the last import from `jdnn.train` into `jdnn.checkpoint`.
"""

from jdnn.checkpoint.callback import ModelCheckpoint

__all__ = ["ModelCheckpoint"]
