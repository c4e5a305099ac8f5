"""Freezing schedules inside other people's training loops.

The host trainer owns the loop, the model wrapping and the optimizer; freezelab's callbacks only
ask the :class:`~freezelab.freezer.Freezer` for the trainable set before each *optimizer* step,
so gradient accumulation, checkpoints and LR schedulers keep working the host's way.

* :mod:`freezelab.integrations.lightning`: ``FreezelabCallback`` for ``lightning.pytorch.Trainer``
  (``pip install 'freezelab[lightning]'``).
* :mod:`freezelab.integrations.transformers`: ``FreezelabCallback`` for ``transformers.Trainer``
  (``pip install 'freezelab[transformers]'``).

Importing this package imports neither host; each submodule imports its own.
"""

from ._host import HostFreezing, IntegrationError

__all__ = ["HostFreezing", "IntegrationError"]
