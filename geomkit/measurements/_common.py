"""Option declarations several measurements share (one option, one flag, one default)."""

from __future__ import annotations

from typing import Any

from geomkit.measurements import check_options, option


class Options:
    """Base of every options dataclass: validates its fields on construction."""

    def __post_init__(self) -> None:
        check_options(self)


def samples() -> Any:
    return option(128, "analysis examples: the first N of the training split", metavar="N",
                  minimum=1)


def seed() -> Any:
    return option(0, "seed of Lanczos start vectors, NTK initializations, probes and "
                  "corruption noise")


def device() -> Any:
    return option(None, "compute device: cpu, cuda, cuda:N or auto (none: the CPU, where "
                  "checkpoints load)", none_ok=True)


def batch_size() -> Any:
    return option(None, "analysis mini-batch (None: automatic)", minimum=1, none_ok=True)


def model(ck: Any, o: Any) -> Any:
    """The checkpoint's model on the options' device (``auto``: CUDA when present)."""
    from geomkit.device import resolve_device

    return ck.model if o.device is None else ck.model.to(resolve_device(o.device))


def _check_loss(v: Any) -> None:
    from geomkit.geometry._inputs import resolve_loss

    resolve_loss(v)


def loss() -> Any:
    return option("ce", "loss the Hessian is of: ce, ce:EPS (label smoothing), bce or mse",
                  check=_check_loss)


def with_loss(settings: dict[str, Any], o: Any) -> dict[str, Any]:
    """``settings`` plus the loss when it is not the default ``ce`` (results stored before
    the loss was an option keep matching)."""
    return settings if o.loss == "ce" else {**settings, "loss": o.loss}
