"""The GPU check: prove the CUDA paths and take every GPU number in one short run.

A GPU is lent to this project only now and then, for minutes, on a bare machine, so this
script is prepared in advance and runs as one command (``make gpu-check``)::

    python benchmarks/gpu_check.py [--out runs/gpu-check] [--budget 450] [--stages a,b]
    python benchmarks/gpu_check.py --dry-run      # the same stages at toy sizes on the CPU

Stages, each in its own process with its own time box (a crash, an out-of-memory or a hang
ends that stage only), each writing ``OUT/<stage>.json`` as its rows come in, and
``OUT/summary.md`` rewritten after every stage, so a run cut off at any point still
returns what it measured:

``tests``      the device-parametrized tests on CUDA (``pytest -m gpu``);
``train``      training step time, vanilla vs SAM, ``vit-s16``/``mixer-s16``/``resnet50``
               at 224 px on synthetic data, batch 128, float32 / TF32 / bf16 autocast, and
               the ratio SAM step ÷ vanilla step (the limit is 2×);
``hvp``        one HVP vs one gradient on ``vit-b16`` at 224 px, batch 64, per strategy;
``table3``     the Table 3 row (paper blocks) of ``vit-b16`` at N = 1024 in float32: time,
               HVPs and peak memory per block, then N = 4096 while time is left;
``ntk``        NTK κ of ``vit-b16`` at N = 64 (float64 kernel) against the per-sample loop;
``landscape``  grid points/s on ``vit-tiny``/``resnet-tiny`` (digits, N = 1024) for
               ``points_per_call`` K = 1, 4, 16 against the reference tool's loop, and on
               ``vit-s16`` at 224 px.

Synthetic data (Gaussian images, random labels) and untrained weights: the stages time
the arithmetic of paper-sized models, not their trained spectra.  Peak memory is
``torch.cuda.max_memory_allocated`` on CUDA and the process's peak RSS on the CPU.
On a machine without CUDA (and without ``--dry-run``) it says so in one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run from a bare checkout (PYTHONPATH-free) on the GPU box
    sys.path.insert(0, str(ROOT))

STAGES = ("tests", "train", "hvp", "table3", "ntk", "landscape")
# Share of the budget each stage may take (the tests' and the row's are the long ones).
SHARES = {"tests": 0.24, "train": 0.20, "hvp": 0.08, "table3": 0.24, "ntk": 0.10,
          "landscape": 0.14}
GRACE_S = 30.0  # past its box, a stage that ignores its deadline (a hung kernel) is killed

# Paper-scale sizes, and the toy sizes of the CPU dry run (same code paths).
FULL = {
    "image": 224, "chans": 3, "classes": 1000, "train_models": ("vit-s16", "mixer-s16", "resnet50"),
    "train_batch": 128, "train_warmup": 3, "train_steps": 10, "big": "vit-b16",
    "hvp_batch": 64, "hvp_reps": 3, "row_n": (1024, 4096), "row_batch": 256, "row_iter": 100,
    "ntk_n": 64, "land_small_n": 1024, "land_grid": 11, "land_k": (1, 4, 16),
    "land_big": "vit-s16", "land_big_n": 256, "land_big_grid": 3,
}
DRY = {
    "image": 16, "chans": 3, "classes": 5, "train_models": ("vit-tiny", "mixer-tiny",
                                                            "resnet-tiny"),
    "train_batch": 8, "train_warmup": 1, "train_steps": 2, "big": "vit-tiny",
    "hvp_batch": 8, "hvp_reps": 1, "row_n": (8, 16), "row_batch": 8, "row_iter": 6,
    "ntk_n": 6, "land_small_n": 32, "land_grid": 3, "land_k": (1, 4),
    "land_big": "vit-tiny", "land_big_n": 16, "land_big_grid": 2,
}


# ----------------------------------------------------------------------------- helpers
def _write_json(path: Path, obj: Any) -> None:
    """Atomic write (a stage killed mid-write leaves the previous rows)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable, allow_nan=False))
    os.replace(tmp, path)


def _jsonable(v: Any) -> Any:
    return str(v)


def _finite(x: float | None) -> float | None:
    """JSON has no NaN: non-finite numbers are written as null."""
    return None if x is None or not math.isfinite(x) else float(x)


class Stage:
    """One stage's record: its rows, written to ``OUT/<name>.json`` after each one."""

    def __init__(self, name: str, out: Path, deadline: float, dry: bool) -> None:
        import torch

        self.name, self.path, self.deadline, self.dry = name, out / f"{name}.json", deadline, dry
        self.sizes = DRY if dry else FULL
        self.device = torch.device("cpu" if dry else "cuda")
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.t0 = time.perf_counter()
        self.save()

    def left(self) -> float:
        return self.deadline - time.time()

    def add(self, **row: Any) -> None:
        self.rows.append({k: _finite(v) if isinstance(v, float) else v for k, v in row.items()})
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.save()

    def save(self, status: str = "running") -> None:
        _write_json(self.path, {"stage": self.name, "status": status, "rows": self.rows,
                                "notes": self.notes,
                                "seconds": time.perf_counter() - self.t0})

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        # ru_maxrss is KiB on Linux: the process's peak, not this measurement's alone
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t, out


def _synthetic(n: int, sizes: dict, device, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, sizes["chans"], sizes["image"], sizes["image"], generator=g)
    y = torch.randint(0, sizes["classes"], (n,), generator=g)
    return x.to(device), y.to(device)


def _build(name: str, sizes: dict, device):
    import torch

    from geomkit.models import build

    torch.manual_seed(0)
    return build(name, image_size=sizes["image"], in_chans=sizes["chans"],
                 num_classes=sizes["classes"]).to(device)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def _oom_types() -> tuple[type[BaseException], ...]:
    import torch

    return (torch.OutOfMemoryError, MemoryError)


# ------------------------------------------------------------------------------ stages
def stage_tests(st: Stage) -> None:
    """``pytest -m gpu`` (the CUDA half of every device-parametrized test)."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rfE"]
    if st.dry:
        # no CUDA here: prove the selection collects the device tests, nothing more
        cmd += ["--collect-only", "tests"]
    else:
        try:
            import xdist  # noqa: F401  (the GPU image has pytest-xdist; tiny tests wait on
            cmd += ["-n", "4"]  # kernel launches, so four workers share the one GPU well)
        except ImportError:
            pass
    timeout = max(st.left() - 5, 10)
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (
            e.stdout or "")
        rc = "timeout"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or
                    "failed" in ln or "selected" in ln or "error" in ln)), "")
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    st.add(command=" ".join(cmd[1:]), rc=rc, summary=summary.strip("= "),
           seconds=time.perf_counter() - t, failures=failed[:40], tail=lines[-25:])


def stage_train(st: Stage) -> None:
    """Step time of geomkit's own training step (vanilla vs SAM) per precision."""
    import torch
    import torch.nn.functional as F

    from geomkit.device import set_tf32
    from geomkit.models import family
    from geomkit.train.config import TrainConfig
    from geomkit.train.loop import make_optimizer, train_step

    s = st.sizes
    x, y = _synthetic(s["train_batch"], s, st.device)
    precisions = ("float32", "tf32", "bf16")
    for name in s["train_models"]:
        model = _build(name, s, st.device).train()
        fam = family(model)
        for prec in precisions:
            set_tf32(prec == "tf32")
            amp = prec == "bf16"
            ms: dict[str, float] = {}
            for opt_name in ("vanilla", "sam"):
                if st.left() < 5:
                    st.note(f"stopped before {name} {prec} {opt_name}: time box reached")
                    set_tf32(False)
                    return
                # the family's defaults, as `geomkit train` resolves them (vanilla = SAM's base)
                sam_cfg = TrainConfig(model=name, optimizer="sam", bf16=amp).resolved(fam)
                cfg = sam_cfg if opt_name == "sam" else TrainConfig(
                    model=name, optimizer=sam_cfg.base_optimizer, bf16=amp).resolved(fam)
                optimizer = make_optimizer(model, cfg)
                ctx = (torch.autocast(st.device.type, dtype=torch.bfloat16) if amp
                       else torch.autocast(st.device.type, enabled=False))

                def loss_fn(model=model, ctx=ctx):
                    with ctx:
                        out = model(x)
                    return F.cross_entropy(out.float(), y)

                def step(model=model, optimizer=optimizer, cfg=cfg, loss_fn=loss_fn):
                    return train_step(model, optimizer, loss_fn, sam=cfg.is_sam,
                                      grad_clip=cfg.grad_clip)

                st.reset_peak()
                try:
                    for _ in range(s["train_warmup"]):
                        step()
                    times = [st.timed(step)[0] for _ in range(s["train_steps"])]
                except _oom_types() as e:
                    st.add(model=name, precision=prec, optimizer=opt_name,
                           error=f"out of memory: {str(e).splitlines()[0][:120]}")
                    continue
                ms[opt_name] = 1e3 * _median(times)
                st.add(model=name, precision=prec, optimizer=opt_name,
                       optimizer_class=type(optimizer).__name__, batch=s["train_batch"],
                       ms_per_step=ms[opt_name], ms_min=1e3 * min(times),
                       ms_max=1e3 * max(times),
                       images_per_s=s["train_batch"] / (ms[opt_name] / 1e3),
                       peak_gib=st.peak_gib())
                del optimizer
            if len(ms) == 2:
                st.add(model=name, precision=prec, optimizer="sam/vanilla",
                       ratio=ms["sam"] / ms["vanilla"])
        set_tf32(False)
        del model


def stage_hvp(st: Stage) -> None:
    """One HVP vs one gradient on the big ViT, every HVP strategy, float32 (TF32 off)."""
    import torch
    import torch.nn.functional as F

    from geomkit.geometry.blocks import resolve_blocks
    from geomkit.geometry.hvp import HessianOperator

    s = st.sizes
    model = _build(s["big"], s, st.device).eval()
    x, y = _synthetic(s["hvp_batch"], s, st.device, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]

    def plain_grad():
        return torch.autograd.grad(F.cross_entropy(model(x), y), params)

    st.reset_peak()
    plain_grad()
    t_grad = _median([st.timed(plain_grad)[0] for _ in range(s["hvp_reps"])])
    st.add(strategy="plain gradient (forward + backward)", seconds=t_grad, ratio_to_grad=1.0,
           peak_gib=st.peak_gib())
    blocks = resolve_blocks(model, ("whole",))
    paper = resolve_blocks(model, ("paper",))
    for strategy in ("reuse", "stream", "func"):
        if st.left() < 10:
            st.note(f"stopped before strategy {strategy}: time box reached")
            return
        st.reset_peak()
        try:
            setup, op = st.timed(lambda strategy=strategy: HessianOperator(
                model, x, y, blocks, strategy=strategy, batch_size=s["hvp_batch"]))
            v = torch.randn(op.dims["whole"], generator=torch.Generator().manual_seed(0)).to(
                st.device, op.dtype)
            op.matvec("whole", v)  # warm-up (and the reuse graph's first use)
            t_hvp = _median([st.timed(lambda op=op, v=v: op.matvec("whole", v))[0]
                             for _ in range(s["hvp_reps"])])
            t_opg = st.timed(lambda op=op: op.gradient("whole"))[0]
        except _oom_types() as e:
            st.add(strategy=strategy, error=f"out of memory: {str(e).splitlines()[0][:120]}")
            continue
        st.add(strategy=strategy, seconds=t_hvp, ratio_to_grad=t_hvp / t_grad,
               setup_seconds=setup, operator_gradient_seconds=t_opg, peak_gib=st.peak_gib())
        op.release()
        del op
    # The 7 paper blocks' products: one call sharing the forward (stream) vs one each.
    if st.left() < 20:
        st.note("stopped before the paper-block batch: time box reached")
        return
    st.reset_peak()
    op = HessianOperator(model, x, y, paper, strategy="stream", batch_size=s["hvp_batch"])
    vs = [(b, torch.randn(op.dims[b], generator=torch.Generator().manual_seed(i)).to(
        st.device, op.dtype)) for i, b in enumerate(paper)]
    op.matvecs(vs)
    t_joint = st.timed(lambda: op.matvecs(vs))[0]
    t_each = st.timed(lambda: [op.matvec(b, v) for b, v in vs])[0]
    st.add(strategy=f"stream, {len(vs)} paper blocks in one call", seconds=t_joint,
           ratio_to_grad=t_joint / t_grad, separate_seconds=t_each,
           joint_speedup=t_each / t_joint, peak_gib=st.peak_gib())
    # The same products from one vmapped backward over stacked tangents (batched=True)
    # against one backward per block, on the retained graph: which is faster on this chip
    # decides HessianOperator(batched=...)'s default for CUDA (slower on the CPU).
    op.release()
    del op
    if st.left() < 20:
        st.note("stopped before the batched paper-block products: time box reached")
        return
    st.reset_peak()
    try:
        op = HessianOperator(model, x, y, paper, strategy="reuse")
        op.matvecs(vs)
        t_sep = _median([st.timed(lambda: op.matvecs(vs))[0] for _ in range(s["hvp_reps"])])
        op.batched = True
        op.matvecs(vs)
        t_bat = _median([st.timed(lambda: op.matvecs(vs))[0] for _ in range(s["hvp_reps"])])
        op.batched = False
        ref = op.matvecs(vs)
        op.batched = True
        got = op.matvecs(vs)
        diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                   for a, b in zip(got, ref, strict=True))
    except _oom_types() as e:
        st.add(strategy="reuse, paper blocks batched", error=f"out of memory: "
               f"{str(e).splitlines()[0][:120]}")
        return
    st.add(strategy=f"reuse, {len(vs)} paper blocks: one vmapped backward", seconds=t_bat,
           separate_seconds=t_sep, batched_speedup=t_sep / t_bat, max_rel_diff=diff,
           peak_gib=st.peak_gib())


def stage_table3(st: Stage) -> None:
    """The Table 3 row of the big ViT, block by block (each block's numbers kept at once)."""
    from geomkit.geometry.blocks import resolve_blocks
    from geomkit.geometry.hessian import hessian_eigs

    s = st.sizes
    model = _build(s["big"], s, st.device).eval()
    blocks = resolve_blocks(model, ("paper",))
    for n in s["row_n"]:
        x, y = _synthetic(n, s, st.device, seed=2)
        total_t, total_h = 0.0, 0
        for b in blocks:
            if st.left() < 15:
                st.note(f"stopped at N={n} before block {b}: time box reached")
                return
            st.reset_peak()
            try:
                dt, r = st.timed(lambda b=b, x=x, y=y: hessian_eigs(
                    model, x, y, blocks=[b], tol=1e-4, max_iter=s["row_iter"],
                    batch_size=s["row_batch"]))
            except _oom_types() as e:
                st.add(n=n, block=b, error=f"out of memory: {str(e).splitlines()[0][:120]}")
                continue
            e = r.blocks[b]
            total_t, total_h = total_t + dt, total_h + e.n_hvps
            st.add(n=n, block=b, lambda_max=float(e.lambda_max), hvps=e.n_hvps,
                   converged=bool(e.converged), seconds=dt, strategy=r.strategy,
                   params=e.n_params, peak_gib=st.peak_gib())
        st.add(n=n, block="row total", hvps=total_h, seconds=total_t)
        del x, y


def stage_ntk(st: Stage) -> None:
    """NTK κ of the big ViT (float32 compute, float64 kernel) vs the per-sample loop."""
    import torch

    from geomkit.geometry.ntk import ntk

    s = st.sizes
    model = _build(s["big"], s, st.device).eval()
    x, _ = _synthetic(s["ntk_n"], s, st.device, seed=3)
    st.reset_peak()
    budget = 4.0 if st.dry else 32.0
    dt, r = st.timed(lambda: ntk(model, x, bn="train", memory_gib=budget))
    st.add(method=f"geomkit ntk (memory_gib={budget:g})", seconds=dt, kappa=float(r.kappa),
           chunks=r.n_chunks,
           lambda_max=float(r.lambda_max), lambda_min=float(r.lambda_min),
           peak_gib=st.peak_gib())
    if st.left() < 20:
        st.note("stopped before the per-sample loop: time box reached")
        return
    params = [p for p in model.parameters() if p.requires_grad]

    def loop() -> torch.Tensor:
        # TE-NAS's loop: one backward per example (no BatchNorm in a ViT, so examples are
        # independent); Θ accumulated in float64 over parameter tensors.
        rows = [torch.autograd.grad(model(x[i:i + 1]).sum(), params) for i in range(len(x))]
        theta = torch.zeros(len(x), len(x), dtype=torch.float64, device=st.device)
        for j in range(len(params)):
            gj = torch.stack([r[j].reshape(-1) for r in rows]).double()
            theta += gj @ gj.T
        return theta

    st.reset_peak()
    dt_loop, theta = st.timed(loop)
    ev = torch.linalg.eigvalsh(theta.cpu())
    kappa = float(ev[-1] / ev[0])
    st.add(method="per-sample loop (float64 Gram)", seconds=dt_loop, kappa=kappa,
           lambda_max=float(ev[-1]), lambda_min=float(ev[0]), peak_gib=st.peak_gib(),
           speedup_of_geomkit=dt_loop / dt, kappa_rel_diff=abs(r.kappa - kappa) / kappa)


def stage_landscape(st: Stage) -> None:
    """Grid points/s: geomkit with K points per call vs the reference tool's loop."""
    import numpy as np

    sys.path.insert(0, str(HERE))
    from landscape import reference_surface  # benchmarks/landscape.py

    from geomkit.data import DataSpec, load_split
    from geomkit.geometry.landscape import Grid, loss_landscape, random_directions

    s = st.sizes
    xd, yd = load_split(DataSpec(source="digits"), "train")
    small = {"image": 8, "chans": 1, "classes": 10}
    cases = [(name, small, xd[: s["land_small_n"]].to(st.device),
              yd[: s["land_small_n"]].to(st.device), s["land_grid"], s["land_k"])
             for name in ("vit-tiny", "resnet-tiny")]
    big_x, big_y = _synthetic(s["land_big_n"], s, st.device, seed=4)
    cases.append((s["land_big"], s, big_x, big_y, s["land_big_grid"], s["land_k"][:2]))
    for name, sizes, x, y, g, ks in cases:
        model = _build(name, sizes, st.device).eval()
        dirs = random_directions(model, 2, seed=0)
        grid = Grid((-1.0, 1.0, g), (-1.0, 1.0, g))
        if st.left() < 10:
            st.note(f"stopped before {name}: time box reached")
            return
        st.reset_peak()
        t_ref, ref = st.timed(lambda model=model, dirs=dirs, grid=grid, x=x, y=y:
                              reference_surface(model, x, y, dirs, grid))
        st.add(model=name, n=len(x), grid=f"{g}x{g}", method="reference loop (batch 128)",
               points_per_s=grid.size / t_ref, speedup=1.0, max_rel_diff=0.0,
               peak_gib=st.peak_gib())
        for k in ks:
            if st.left() < 5:
                st.note(f"stopped at {name} K={k}: time box reached")
                return
            st.reset_peak()
            try:
                loss_landscape(model, x, y, dirs, grid, points_per_call=k)  # warm-up
                t, land = st.timed(lambda k=k, model=model, dirs=dirs, grid=grid, x=x, y=y:
                                   loss_landscape(model, x, y, dirs, grid, points_per_call=k))
            except _oom_types() as e:
                st.add(model=name, method=f"geomkit K={k}",
                       error=f"out of memory: {str(e).splitlines()[0][:120]}")
                continue
            rel = float(np.nanmax(np.abs(land.loss - ref) / np.abs(ref)))
            st.add(model=name, n=len(x), grid=f"{g}x{g}", method=f"geomkit K={k}",
                   points_per_s=grid.size / t, speedup=t_ref / t, max_rel_diff=rel,
                   peak_gib=st.peak_gib())
        del model


STAGE_FNS = {"tests": stage_tests, "train": stage_train, "hvp": stage_hvp,
             "table3": stage_table3, "ntk": stage_ntk, "landscape": stage_landscape}


# ----------------------------------------------------------------------------- summary
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return f"{len(v)} item(s)"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "/")


def summary_markdown(out: Path, meta: dict[str, Any]) -> str:
    lines = ["# GPU check", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in meta.items()]
    for name in STAGES:
        p = out / f"{name}.json"
        if not p.exists():
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            lines += ["", f"## {name}", "", f"unreadable record: {e}"]
            continue
        lines += ["", f"## {name} ({rec.get('status')}, {rec.get('seconds', 0):.0f} s)", ""]
        rows = rec.get("rows", [])
        if name == "tests":
            for r in rows:
                lines += [f"`{r['command']}` → rc {r['rc']}: {r['summary']}", ""]
                lines += [f"- {f}" for f in r.get("failures", [])]
            rows = []
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        if rows:
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
        lines += [f"- {n}" for n in rec.get("notes", [])]
        if rec.get("error_tail"):
            lines += ["", "```", *rec["error_tail"], "```"]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- main
def _meta(dry: bool) -> dict[str, Any]:
    import torch

    meta: dict[str, Any] = {
        "mode": "dry run (CPU, toy sizes)" if dry else "full",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name(0)
        meta["cuda"] = torch.version.cuda
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        meta["commit"] = rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        meta["commit"] = "unknown"
    return meta


def run_all(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        print(f"gpu-check: unknown stage {bad[0]!r}; valid: {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    meta = _meta(args.dry_run)
    meta["budget_s"] = args.budget
    t_start = time.time()
    results: dict[str, str] = {}
    for i, name in enumerate(stages):
        left_total = args.budget - (time.time() - t_start)
        rest = sum(SHARES[s] for s in stages[i:])
        box = max(left_total * SHARES[name] / rest, 5.0) if left_total > 5 else 0.0
        if box <= 0:
            results[name] = "not run (budget spent)"
            continue
        # the box includes the stage process's start (imports, CUDA init)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--out",
               str(out), "--deadline", str(time.time() + box)]
        if args.dry_run:
            cmd.append("--dry-run")
        print(f"gpu-check: {name} (time box {box:.0f} s)", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, timeout=box + GRACE_S,
                                  capture_output=True, text=True)
            results[name] = "done" if proc.returncode == 0 else f"failed (rc {proc.returncode})"
            tail = None
            if proc.returncode != 0:  # the traceback goes into the record (files back are few)
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
                print("\n".join(tail), file=sys.stderr)
        except subprocess.TimeoutExpired:
            results[name], tail = "killed at its time box", None
        _mark(out / f"{name}.json", results[name], tail)
        (out / "summary.md").write_text(summary_markdown(out, meta | {"stages": results}))
    text = summary_markdown(out, meta | {"stages": results,
                                         "wall_s": round(time.time() - t_start, 1)})
    (out / "summary.md").write_text(text)
    print(text, end="")
    return 0 if all(v == "done" for v in results.values()) else 1


def _mark(path: Path, status: str, error_tail: list[str] | None = None) -> None:
    """Stamp the stage's final status (and a failure's last lines) into its record."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        rec = {"stage": path.stem, "rows": [], "notes": []}
    rec["status"] = status
    if error_tail:
        rec["error_tail"] = error_tail
    _write_json(path, rec)


def run_stage(args: argparse.Namespace) -> int:
    import torch

    from geomkit.device import set_tf32

    set_tf32(False)
    if args.dry_run:
        torch.set_num_threads(1)
    st = Stage(args.stage, Path(args.out), args.deadline, args.dry_run)
    STAGE_FNS[args.stage](st)
    st.save("done")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/gpu-check", help="results folder")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for all stages (default 450 on a GPU, 240 dry)")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages")
    ap.add_argument("--dry-run", action="store_true",
                    help="toy sizes on the CPU: checks the script, measures nothing")
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not importable with this Python", file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu-check: CUDA is not available here (torch {torch.__version__}); run it on a "
              "GPU machine, or add --dry-run (make gpu-check DRY=1) for the CPU toy sizes",
              file=sys.stderr)
        return 2
    if args.stage:
        return run_stage(args)
    if args.budget is None:
        args.budget = 240.0 if args.dry_run else 450.0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
