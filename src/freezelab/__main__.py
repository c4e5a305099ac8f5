"""``python -m freezelab`` is the ``freezelab`` command; ``torchrun --nproc_per_node N -m freezelab train ...`` too."""

from freezelab.cli import app

app(prog_name="freezelab")
