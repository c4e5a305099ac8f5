"""The ``freezelab`` command line."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Layer-freezing schedules for PyTorch.")


@app.callback()
def main() -> None:
    """freezelab: split a model into parameter groups, freeze them on a schedule, compare fairly."""


@app.command()
def demo() -> None:
    """Show the freezing engine on a tiny model: which groups train at each step, and proof they are frozen."""
    import torch
    from torch import nn

    from . import Freezer, groups
    from .schedules import Alternate, Clock

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    gs = groups.depth(model, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    fz = Freezer(model, gs, Alternate(unit="batch", every=2), opt, policy="keep")
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    typer.echo(f"groups: {gs.describe()}\nschedule: {fz.schedule.describe()}")
    for step in range(6):
        fz.step(Clock.at(step, steps_per_epoch=6, epochs=1))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        fz.optimizer.step()
        fz.optimizer.zero_grad(set_to_none=True)
        moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        typer.echo(f"step {step}: trains {'+'.join(sorted(fz.trainable))}, loss {loss.item():.3f}, updated {moved}")


if __name__ == "__main__":
    app()
