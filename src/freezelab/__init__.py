"""freezelab: study and use layer-freezing schedules while training PyTorch models.

The flow is ``config -> groups -> schedules -> freezer -> run -> study -> report``: this package
exports the engine (groups, schedules, the freezer); :mod:`freezelab.run` trains one run,
:mod:`freezelab.study` a fair grid of them, :mod:`freezelab.report` compares them.
"""

from . import groups, schedules
from .freezer import POLICIES, Freezer, freeze
from .groups import Group, GroupError, GroupSet
from .schedules import Clock, Schedule, ScheduleError, parse_schedule, schedule_from_dict

__version__ = "0.1.0"

__all__ = [
    "POLICIES",
    "Clock",
    "Freezer",
    "Group",
    "GroupError",
    "GroupSet",
    "Schedule",
    "ScheduleError",
    "freeze",
    "groups",
    "parse_schedule",
    "schedule_from_dict",
    "schedules",
]
