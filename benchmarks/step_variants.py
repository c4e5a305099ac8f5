"""Which kernels make seed 004's training step fast, and how many runs can share one GPU?

Part 1 (``--part step``): the FashionMLP step (batch 128, Adam, lr 1e-3) replayed from CUDA
graphs of 32 steps, each variant in its own process (some options are read once per process):

* ``base``: eager modules and torch's fused Adam, what ``GraphStepper`` captures today;
* ``cublas`` / ``no_lt``: other cuBLAS entry points for the linear layers' GEMMs;
* ``c_opt`` / ``c_model`` / ``c_both``: ``torch.compile`` (default mode) of the optimizer step,
  of forward+loss (its backward compiled by AOTAutograd), or of both, captured in our graphs;
* ``c_both_at``: ``c_both`` with Inductor's GEMM autotuning (Triton templates vs cuBLAS);
* ``tf32`` / ``c_both_tf32``: the same with TF32 matmuls, for reference only (numerics change).

For each: ms per step, kernels per step, the top kernels, compile time, and the largest
difference of the first 64 losses from ``base`` (same seed, same batches).

Part 2 (``--part streams``): N independent runs (seeds 0..N-1) captured into ONE graph on N
parallel streams (fork/join), so their small kernels overlap; aggregate steps/s against one run
alone, and whether run 0 inside the group equals run 0 alone bit for bit.

Part 3 (``--part vmap``): a ``torch.func`` ensemble of E runs (stacked weights, one batched
step), for comparison.

    python benchmarks/step_variants.py --out $OUT        # all parts, GPU only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from freezelab.models import build_model  # noqa: E402

N_TRAIN, BS, CHUNK, LR = 54_000, 128, 32, 1e-3
VARIANTS = ["base", "cublaslt", "no_lt", "tunable", "c_both", "c_both_lt", "c_both_tunable", "tf32", "c_both_tf32", "c_both_at"]
QUICK = [v for v in VARIANTS if v != "c_both_at"]


def data(device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(N_TRAIN, 784, generator=g).to(device)
    y = torch.randint(0, 10, (N_TRAIN,), generator=g).to(device)
    return x, y


class Trainer:
    """One run's state and its step, written so that the step can be captured into a graph."""

    def __init__(self, seed, x, y, *, compile_model=False, compile_opt=False, fused=True):
        dev = x.device
        torch.manual_seed(seed)
        self.model = build_model("fashion_mlp").to(dev)
        self.x, self.y = x, y
        g = torch.Generator(device="cpu").manual_seed(seed)
        self.perm = torch.randperm(N_TRAIN, generator=g).to(dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.offsets = torch.arange(BS, device=dev)
        self.losses = torch.zeros(N_TRAIN // BS + 1, device=dev)
        self.lr = torch.tensor(LR, device=dev)
        if compile_opt:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, foreach=True, capturable=True)
            self.opt_step = torch.compile(self.opt.step)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=self.lr, fused=fused, capturable=True)
            self.opt_step = self.opt.step
        model = self.model

        def loss_fn(xb, yb):
            return F.cross_entropy(model(xb), yb)

        self.loss_fn = torch.compile(loss_fn) if compile_model else loss_fn

    def step(self):
        idx = self.perm.index_select(0, self.offsets + self.pos * BS)
        loss = self.loss_fn(self.x.index_select(0, idx), self.y.index_select(0, idx))
        loss.backward()
        self.opt_step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.index_copy_(0, self.pos, loss.detach().view(1))
        self.pos.add_(1)

    def rewind(self):
        self.pos.zero_()


def capture(trainers, steps, streams=None):
    """One graph with ``steps`` steps of every trainer, each trainer on its own stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for t in trainers:  # warm-up: compiles, creates optimizer state and workspaces
            for _ in range(3):
                t.step()
            t.rewind()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        if streams is None:
            for t in trainers:
                for _ in range(steps):
                    t.step()
        else:
            for t, s in zip(trainers, streams):
                s.wait_stream(side)
                with torch.cuda.stream(s):
                    for _ in range(steps):
                        t.step()
            for s in streams:
                side.wait_stream(s)
    return graph


def time_replays(graph, trainers, replays, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        for t in trainers:
            t.rewind()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def kernel_table(graph, trainers, steps):
    from torch.profiler import ProfilerActivity, profile

    for t in trainers:
        t.rewind()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    ks = [e for e in prof.key_averages() if e.device_time_total > 0]
    per_step = sum(e.count for e in ks) / steps
    top = [(e.key[:80], e.count / steps, e.device_time_total / steps) for e in sorted(ks, key=lambda e: -e.device_time_total)[:14]]
    return per_step, top


def one_variant(name: str) -> dict:
    """Measure one step variant (run in a fresh process)."""
    if name.endswith("lt") and name != "no_lt" or "tunable" in name:
        torch.backends.cuda.preferred_blas_library("cublaslt")
    if "tunable" in name:
        import torch.cuda.tunable as tunable

        tunable.enable(True)
        tunable.tuning_enable(True)
        tunable.set_filename(f"/tmp/tunableop_{name}.csv")
    if "tf32" in name:
        torch.backends.cuda.matmul.allow_tf32 = True
    if name.endswith("_at"):
        import torch._inductor.config as ic

        ic.max_autotune_gemm = True
        ic.max_autotune_gemm_backends = "ATEN,TRITON"
    compiled = name.startswith("c_")
    x, y = data("cuda")
    t0 = time.perf_counter()
    tr = Trainer(0, x, y, compile_model=compiled and name != "c_opt", compile_opt=compiled and name != "c_model")
    graph = capture([tr], CHUNK)
    setup_s = time.perf_counter() - t0
    tr.rewind()
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    losses = tr.losses[: 2 * CHUNK].cpu().tolist()
    replays = 13  # ~ one epoch of 422 steps
    secs = time_replays(graph, [tr], replays)
    per_step, top = kernel_table(graph, [tr], CHUNK)
    extra = {}
    if "tunable" in name:
        import torch.cuda.tunable as tunable

        extra = {"tuned": str(tunable.get_results())[:3000],
                 "has_cublaslt_candidates": hasattr(tunable, "set_cublaslt_requested_algo_count")}
    return {**extra, "variant": name, "ms_per_step": 1000 * secs / (replays * CHUNK), "epoch_s_422": secs / (replays * CHUNK) * 422,
            "kernels_per_step": per_step, "setup_s": setup_s, "losses": losses, "top_kernels": top}


def part_step(out: str) -> list[dict]:
    results = []
    for name in (VARIANTS if os.environ.get("STEP_VARIANTS_ALL") else QUICK):
        env = dict(os.environ)
        if name == "no_lt":
            env["DISABLE_ADDMM_CUDA_LT"] = "1"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--variant", name], env=env, capture_output=True, text=True,
                                  timeout=300 if name.endswith("_at") else 150)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if not line:
                raise RuntimeError(proc.stderr[-1500:])
            res = json.loads(line[-1])
        except Exception as exc:  # noqa: BLE001 - a failed option is a result too
            res = {"variant": name, "error": str(exc)[-1500:]}
        res["wall_s"] = time.perf_counter() - t0
        results.append(res)
        print(json.dumps({k: v for k, v in res.items() if k not in ("losses",)}, indent=None)[:3000], flush=True)
    base = next((r for r in results if r["variant"] == "base" and "losses" in r), None)
    for r in results:
        if base and "losses" in r:
            r["max_loss_diff_vs_base"] = max(abs(a - b) for a, b in zip(r["losses"], base["losses"]))
    return results


def part_streams(counts=(1, 6, 12, 30, 60), chunk=8, compiled=False) -> list[dict]:
    x, y = data("cuda")
    rows = []
    alone = Trainer(0, x, y, compile_model=compiled, compile_opt=compiled)
    g1 = capture([alone], chunk)
    replays = 422 // chunk
    t1 = time_replays(g1, [alone], replays)
    alone.rewind()
    for _ in range(4):
        g1.replay()
    ref = alone.losses[: 4 * chunk].clone()
    for n in counts:
        trainers = None
        try:
            t0 = time.perf_counter()
            trainers = [Trainer(s, x, y, compile_model=compiled, compile_opt=compiled) for s in range(n)]
            streams = [torch.cuda.Stream() for _ in range(n)]
            g = capture(trainers, chunk, streams)
            setup = time.perf_counter() - t0
            secs = time_replays(g, trainers, replays)
            for t in trainers:
                t.rewind()
            for _ in range(4):
                g.replay()
            torch.cuda.synchronize()
            same = bool(torch.equal(trainers[0].losses[: 4 * chunk], ref))
            seq = capture(trainers, chunk)  # the same runs one after another in one graph
            secs_seq = time_replays(seq, trainers, replays)
            rows.append({"runs": n, "chunk": chunk, "compiled": compiled, "epoch_s_all": secs, "epoch_s_one_alone": t1,
                         "speedup_vs_serial": n * t1 / secs, "epoch_s_all_one_stream": secs_seq,
                         "run0_equals_alone": same, "setup_s": setup})
        except Exception as exc:  # noqa: BLE001
            rows.append({"runs": n, "error": str(exc)[-800:]})
        print(json.dumps(rows[-1]), flush=True)
        del trainers
        torch.cuda.empty_cache()
    return rows


def part_vmap(sizes=(1, 5, 30)) -> list[dict]:
    import copy

    from torch.func import functional_call, stack_module_state

    x, y = data("cuda")
    rows = []
    for e in sizes:
        models = []
        for s in range(e):
            torch.manual_seed(s)
            models.append(build_model("fashion_mlp").cuda())
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        lr = torch.tensor(LR, device="cuda")
        opt = torch.optim.Adam(list(params.values()), lr=lr, fused=True, capturable=True)
        perms = torch.stack([torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(s)) for s in range(e)]).cuda()
        pos = torch.zeros(1, dtype=torch.long, device="cuda")
        offsets = torch.arange(BS, device="cuda")

        def fwd(p, b, xb):
            return functional_call(base, (p, b), (xb,))

        def step():
            idx = perms.index_select(1, offsets + pos * BS)  # [E, BS]
            xb, yb = x[idx], y[idx]
            logits = torch.vmap(fwd)(params, buffers, xb)
            loss = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(e, BS).mean(1).sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            pos.add_(1)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=side):
            for _ in range(CHUNK):
                step()
        best = float("inf")
        for _ in range(3):
            pos.zero_()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(13):
                g.replay()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        rows.append({"ensemble": e, "ms_per_step": 1000 * best / (13 * CHUNK), "epoch_s_all_422": best / (13 * CHUNK) * 422})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant")
    ap.add_argument("--part", default="all", choices=["all", "step", "streams", "vmap"])
    ap.add_argument("--streams-compiled", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args.variant)))
        return
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    parts = {"streams": lambda: part_streams(compiled=args.streams_compiled), "vmap": part_vmap,
             "step": lambda: part_step(args.out)}
    for name, fn in parts.items():
        if args.part in ("all", name):
            try:
                result[name] = fn()
            except Exception as exc:  # noqa: BLE001 - keep the other parts' results
                result[name] = {"error": repr(exc)[-1500:]}
                print(f"part {name} failed: {exc!r}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "step_variants_gpu.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
