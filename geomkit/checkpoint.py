"""Self-describing checkpoints.

A checkpoint is one ``torch.save`` of a dict holding only tensors and plain Python
values, so it loads with ``torch.load(..., weights_only=True)``:

=============  ==============================================================
``format``     ``"geomkit-checkpoint/1"``
``model``      ``{"name": registry name, "kwargs": JSON-able constructor kwargs}``
``state_dict`` the model's parameters and buffers (CPU tensors)
``optimizer``  the optimizer's ``state_dict()`` with CPU tensors (or None)
``step``       optimizer steps taken; ``epoch``: epochs completed
``config``     the resolved training configuration (optimizer, rho, lr, seed, ...)
``data``       the :class:`~geomkit.data.DataSpec` as a dict
``metrics``    final and per-epoch metrics
``provenance`` geomkit/torch versions, host, time
=============  ==============================================================

Every tensor is saved on the CPU, so a checkpoint written by a CUDA run loads on a
CPU-only machine with plain ``torch.load(path, weights_only=True)``; a resumed run's
``optimizer.load_state_dict`` moves the state back to its parameters' device.

Files are written atomically through :func:`geomkit.io.atomic_write` (temporary file
in the same directory, fsync, ``os.replace``), so a killed run never leaves a truncated
file under the final name, and a failed write (disk full, ...) keeps the previous
checkpoint and raises a one-line :class:`~geomkit.errors.ResultFileError`.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomkit.data import DataSpec, load_split
from geomkit.errors import CheckpointError, DataError, GeomkitError
from geomkit.io import atomic_write
from geomkit.models import build
from geomkit.provenance import file_sha256, provenance

FORMAT = "geomkit-checkpoint/1"


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples on the CPU (CPU ones as is)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    config: dict[str, Any],
    data_spec: DataSpec | dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    epoch: int = 0,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically and return its path.

    ``model`` must come from :func:`geomkit.models.build` (it carries ``geomkit_spec``).
    """
    model = getattr(model, "module", model)  # unwrap DDP
    spec = getattr(model, "geomkit_spec", None)
    if spec is None:
        raise ValueError("model has no geomkit_spec: build it with geomkit.models.build()")
    payload = {
        "format": FORMAT,
        "model": {"name": spec["name"], "kwargs": dict(spec["kwargs"])},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": _to_cpu(optimizer.state_dict()) if optimizer is not None else None,
        "step": int(step),
        "epoch": int(epoch),
        "config": dict(config),
        "data": data_spec.to_dict() if isinstance(data_spec, DataSpec) else dict(data_spec),
        "metrics": dict(metrics or {}),
        "provenance": provenance(),
    }
    path = Path(path)

    def write(tmp: Path) -> None:
        # through a Python file object: a failed write surfaces as its OSError (ENOSPC, ...)
        with open(tmp, "wb") as f:
            torch.save(payload, f)

    return atomic_write(path, write)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (eval mode, on the device it was loaded to,
    CPU by default) and everything about its run."""

    path: Path
    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    config: dict[str, Any]
    data_spec: DataSpec
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    step: int
    epoch: int
    optimizer_state: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """``model/optimizer``, e.g. ``vit-tiny/sam`` (optimizer from the training config)."""
        return f"{self.model_name}/{self.config.get('label') or self.config.get('optimizer', '?')}"

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def sha256(self) -> str:
        return self._sha256

    @cached_property
    def _sha256(self) -> str:
        return file_sha256(self.path)

    def analysis_data(
        self, split: str = "train", n: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The analysis-data rule: the first ``n`` examples of ``split`` in the source's
        canonical order, with this checkpoint's eval preprocessing and no augmentation.

        The training subset (``subset`` < 1) is *not* applied here: every checkpoint of a
        source measures on the same examples, whatever fraction it was trained on.
        """
        spec = self.data_spec.replace(augment=False, subset=1.0)
        x, y = load_split(spec, split)
        if n is not None:
            if n < 1:
                raise DataError(f"the number of analysis samples must be >= 1, got {n}")
            if n > len(x):
                raise DataError(
                    f"asked for {n} {split} examples but {spec.source} has only {len(x)}"
                )
            x, y = x[:n], y[:n]
        return x, y

    def fresh_model(self, seed: int) -> nn.Module:
        """The same architecture, newly initialised from ``seed`` (e.g. NTK at init).

        Initialised on the CPU (the same values whatever the device), then moved to the
        device of :attr:`model` (a checkpoint loaded with ``device="cuda"`` gives a CUDA model).
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build(self.model_name, **self.model_kwargs)
        p = next(self.model.parameters(), None)
        return model.to(p.device if p is not None else "cpu").eval()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a geomkit checkpoint (``weights_only=True``) and rebuild its model in eval mode.

    ``path`` may also be a run directory holding ``last.pt``.  Every failure a user can
    cause (missing, not a checkpoint, truncated, unknown model) raises
    :class:`~geomkit.errors.CheckpointError` with a one-line message.
    """
    p = Path(path)
    if p.is_dir() and (p / "last.pt").is_file():
        p = p / "last.pt"
    if not p.exists():
        raise CheckpointError(f"no such checkpoint: {p}")
    if not p.is_file():
        raise CheckpointError(f"not a checkpoint file: {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
    ) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{p} is not a readable checkpoint (truncated or not a torch file): {reason[:160]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a geomkit checkpoint (expected format {FORMAT!r})")
    try:
        name = payload["model"]["name"]
        kwargs = dict(payload["model"]["kwargs"])
        try:
            model = build(name, **kwargs)
        except GeomkitError as e:
            raise CheckpointError(f"{p}: {e}") from None
        try:
            missing, unexpected = model.load_state_dict(payload["state_dict"], strict=False)
        except RuntimeError as e:  # shape mismatches
            reason = str(e).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"{p}: weights do not fit model {name!r}: {reason[:160]}"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"{p}: weights do not fit model {name!r} "
                f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
            )
        try:
            data_spec = DataSpec.from_dict(payload["data"])
        except GeomkitError as e:
            raise CheckpointError(f"{p}: bad data spec: {e}") from None
        step, epoch = int(payload.get("step", 0)), int(payload.get("epoch", 0))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{p} is a damaged geomkit checkpoint ({type(e).__name__}: {e})"
        ) from None
    model.to(device).eval()
    return Checkpoint(
        path=p.resolve(),
        model=model,
        model_name=name,
        model_kwargs=kwargs,
        config=dict(payload.get("config", {})),
        data_spec=data_spec,
        metrics=dict(payload.get("metrics", {})),
        provenance=dict(payload.get("provenance", {})),
        step=step,
        epoch=epoch,
        optimizer_state=payload.get("optimizer"),
    )
