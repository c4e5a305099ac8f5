"""Freezing schedules: pure answers to "which groups train at this step?".

>>> from freezelab.schedules import Alternate, Clock
>>> s = Alternate(unit="batch", every=2)
>>> sorted(s.trainable(Clock.at(2, steps_per_epoch=10, epochs=1), ["first", "second"]))
['second']
>>> schedule_from_dict(s.to_dict()) == s
True
"""

from .base import (
    SCHEDULES,
    Clock,
    Schedule,
    ScheduleError,
    list_schedules,
    parse_schedule,
    register_schedule,
    schedule_from_dict,
)
from .adaptive import AutoFreeze, autofreeze_decisions
from .basic import Alternate, Chain, Freeze, Intersect, Standard, Warmup
from .cycling import BlockCycle, RandomLayers
from .progressive import FreezeOut, Progressive, composer_freeze_fraction, freezeout_times

__all__ = [
    "SCHEDULES",
    "Alternate",
    "AutoFreeze",
    "BlockCycle",
    "Chain",
    "Clock",
    "Freeze",
    "FreezeOut",
    "Intersect",
    "Progressive",
    "RandomLayers",
    "Schedule",
    "ScheduleError",
    "Standard",
    "Warmup",
    "autofreeze_decisions",
    "composer_freeze_fraction",
    "freezeout_times",
    "list_schedules",
    "parse_schedule",
    "register_schedule",
    "schedule_from_dict",
]
