"""A study: many runs of one question, compared fairly.

* :mod:`~freezelab.study.experiment`: a YAML file -> a validated grid of run configs (schedules x grid x seeds);
* :mod:`~freezelab.study.runner`: train the grid into run folders, skip what is finished, resume the rest;
* :mod:`~freezelab.study.lockstep`: several runs on one GPU in shared CUDA graphs, each as it would train alone.
"""

from .experiment import Experiment, ExperimentError, load_experiment
from .lockstep import train_together
from .runner import ConfigChanged, RunOutcome, check_run_dir, run_experiment

__all__ = ["ConfigChanged", "Experiment", "ExperimentError", "RunOutcome", "check_run_dir", "load_experiment",
           "run_experiment", "train_together"]
