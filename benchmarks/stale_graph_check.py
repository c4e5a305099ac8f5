"""Does a compiled loss follow the freeze? Which parameters get gradients after the trainable set changes.

Compiles freezelab's loss the way the graph path does (``torch.compile(model_loss, dynamic=False)``)
and trains a small MLP (depth halves ``first``/``second``, a :class:`freezelab.Freezer` with AdamW,
as ``freezing_savings.py`` does) for 30 steps in each of three trainable sets: ``second`` frozen,
all, ``first`` frozen. Prints which parameters received a gradient (``G``) in each, once with
torch's default Dynamo settings and once after ``freezelab.run.compiled.configure_dynamo()``, each in
a fresh process. A stale graph shows as a pattern that does not match the trainable set
(pytorch/pytorch#139476).

    python benchmarks/stale_graph_check.py > $OUT/stale_graph_gpu.txt
"""

import subprocess
import sys

import torch
from torch import nn

from freezelab import Freezer, groups
from freezelab.run.compiled import configure_dynamo, model_loss
from freezelab.schedules import Clock, Freeze


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def pattern(configured: bool) -> str:
    if configured:
        configure_dynamo()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = _net().to(device)
    gs = groups.depth(net, 2)
    loss = torch.compile(model_loss, dynamic=False)
    x, y = torch.randn(5, 6, device=device), torch.tensor([0, 1, 2, 0, 1], device=device)

    def grads(frozen: tuple[str, ...]) -> str:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        fz = Freezer(net, gs, Freeze(frozen), opt)
        for step in range(30):
            fz.step(Clock.at(step, 30, 1))
            loss(net, x, y).backward()
            fz.optimizer.step()
            fz.optimizer.zero_grad(set_to_none=False)
        return "".join("G" if p.grad is not None else "-" for p in net.parameters())

    seen = " | ".join(grads(frozen) for frozen in (("second",), (), ("first",)))
    from torch._dynamo.utils import counters

    return f"{seen}   (graphs compiled: {counters['stats']['unique_graphs']})"


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(pattern(sys.argv[1] == "configured"))
        sys.exit()
    print(f"# python benchmarks/stale_graph_check.py on {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
          f"torch {torch.__version__}")
    print(f"# groups: {[(g.name, list(g.param_names)) for g in groups.depth(_net(), 2)]}")
    print("# trainable sets: second frozen | all | first frozen (expected GG---- | GGGGGG | --GGGG); "
          "G = the parameter got a gradient in the last step")
    for mode in ("default", "configured"):
        out = subprocess.run([sys.executable, __file__, mode], capture_output=True, text=True)
        print(f"{mode:>10}: {out.stdout.strip() or out.stderr.strip().splitlines()[-1]}", flush=True)
