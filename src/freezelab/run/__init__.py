"""One training run: build it, step it, evaluate it, record it.

* :mod:`~freezelab.run.plan`: the execution plan, decided once per run (device, stepper, compiled or not and why);
* :mod:`~freezelab.run.build`: config + registries -> data, model, groups, schedule, optimizer, freezer, plan;
* :mod:`~freezelab.run.compiled` and :mod:`~freezelab.run.steppers`: how an epoch's steps execute;
* :mod:`~freezelab.run.evaluate`: per-epoch measurements, log rows, the summary;
* :mod:`~freezelab.run.record`: the run folder, written atomically, and resuming from it;
* :mod:`~freezelab.run.loop`: the epoch loop and :func:`train`.
"""

from .build import Run, build_run, build_schedule, check_config
from .loop import RunResult, Training, TrainingDiverged, epoch_loop, run_training, train
from .plan import ExecutionPlan

__all__ = ["ExecutionPlan", "Run", "RunResult", "Training", "TrainingDiverged", "build_run", "build_schedule", "check_config",
           "epoch_loop", "run_training", "train"]
