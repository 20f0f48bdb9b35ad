"""Sharpness-Aware Minimization (SAM, Foret et al. 2021) and adaptive SAM (ASAM, Kwon et al. 2021).

SAM minimises :math:`\\max_{\\|\\epsilon\\|_2 \\le \\rho} L(w + \\epsilon)` with one ascent step and
one descent step per update:

1. gradient at the weights, :math:`g = \\nabla L(w)`;
2. ascent (:meth:`SAM.first_step`): :math:`\\epsilon = \\rho\\, g / \\|g\\|_2`, the norm taken over
   *all* perturbed parameters together; ASAM (``adaptive=True``) uses
   :math:`\\epsilon = \\rho\\, T^2 g / \\|T g\\|_2` with :math:`T = \\operatorname{diag}(|w|)`;
   the weights become :math:`w + \\epsilon`;
3. gradient at the perturbed weights, :math:`g_{SAM} = \\nabla L(w + \\epsilon)`;
4. descent (:meth:`SAM.second_step`): the saved :math:`w` is copied back bit for bit and the
   base optimizer (SGD, AdamW, ...) steps with :math:`g_{SAM}`.

Call sequence for a training loop (what :func:`sam_step` does)::

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    for x, y in loader:
        optimizer.zero_grad(set_to_none=True)
        with model.no_sync() if is_ddp else nullcontext():   # worker-local g (step 1)
            loss_fn(model(x), y).backward()
        optimizer.first_step(zero_grad=True)                  # w <- w + eps
        with frozen_running_stats(model):                     # BN statistics: first pass only
            loss_fn(model(x), y).backward()                   # g_SAM, all-reduced under DDP
        optimizer.clip_grad_norm_(max_norm)                   # optional: clips g_SAM only
        optimizer.second_step(zero_grad=True)                 # w restored, base step
        scheduler.step()                                      # schedulers work on SAM directly

or, equivalently, ``sam_step(model, optimizer, lambda: loss_fn(model(x), y), max_grad_norm=...)``.

Details the loop author relies on:

- **BatchNorm.** Running statistics must be updated by the first forward pass only (the
  second one sees perturbed weights). :func:`disable_running_stats` /
  :func:`enable_running_stats` (or the context manager :func:`frozen_running_stats`) switch
  ``track_running_stats`` off for the second pass: the layer still normalises with the batch
  statistics, but its ``running_mean``, ``running_var`` and ``num_batches_tracked`` are left
  untouched bit for bit (setting the momentum to 0 would still count the batch in
  ``num_batches_tracked``).
- **Gradient clipping** applies to :math:`g_{SAM}`: clip between the second backward and
  :meth:`SAM.second_step`. Clipping the first gradient by its global norm would not change
  :math:`\\epsilon` anyway (it is scale invariant), so a closure that clips is also correct.
- **DistributedDataParallel.** As in the paper (m-sharpness), each worker computes its own
  :math:`\\epsilon` from its *local* gradient: run the first backward inside
  ``model.no_sync()`` so it is not all-reduced; the second backward (outside ``no_sync``)
  all-reduces :math:`g_{SAM}`, so every worker takes the same base step and the restored
  weights stay identical across workers.
- **Schedulers and checkpoints.** SAM and its base optimizer share one ``param_groups`` list,
  so ``lr`` schedulers act on SAM; :meth:`SAM.state_dict` holds the base optimizer's state
  (momentum buffers, Adam moments, ...) and every group's hyperparameters including ``rho``
  and ``adaptive``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from geomkit.errors import GeomkitError

__all__ = [
    "SAM",
    "disable_running_stats",
    "enable_running_stats",
    "frozen_running_stats",
    "sam_step",
]

_SAVED_FLAG = "_geomkit_sam_track_running_stats"


class SAM(torch.optim.Optimizer):
    """SAM / ASAM wrapper around a base optimizer class.

    Args:
        params: parameters or parameter groups (groups may override ``rho``/``adaptive``).
        base_optimizer: an optimizer *class*, e.g. ``torch.optim.SGD`` or ``torch.optim.AdamW``;
            it is built as ``base_optimizer(self.param_groups, **base_kwargs)``.
        rho: neighbourhood radius :math:`\\rho \\ge 0` (``0`` reduces SAM to the base optimizer).
        adaptive: ASAM, :math:`\\epsilon = \\rho T^2 g / \\|T g\\|` with :math:`T = |w|`.
        **base_kwargs: hyperparameters of the base optimizer (``lr``, ``momentum``, ...).

    Use :meth:`step` with a closure, or :meth:`first_step` / :meth:`second_step` around your
    own backward passes (see the module docstring).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if not rho >= 0.0:
            raise GeomkitError(f"SAM rho must be >= 0, got {rho}; pass e.g. rho=0.05")
        if not (
            isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)
        ):
            raise TypeError(
                f"base_optimizer must be an optimizer class such as torch.optim.SGD, "
                f"got {base_optimizer!r}"
            )
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # One list of group dicts for both: schedulers and the base step see the same lr.
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self._perturbed = False
        #: the loss at w + ε of the last full update (:meth:`step`, :func:`sam_step`), detached;
        #: minus that update's loss at w it is SAM's own sharpness estimate, for free.
        self.perturbed_loss: torch.Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to SAM and to the base optimizer (both fill in their defaults)."""
        super().add_param_group(param_group)
        base = getattr(self, "base_optimizer", None)
        if base is not None:
            group = self.param_groups.pop()  # the shared list: let the base add it properly
            base.add_param_group(group)

    @torch.no_grad()
    def _ascent_norm(self) -> torch.Tensor | None:
        """:math:`\\|g\\|_2` (or :math:`\\|T g\\|_2` per adaptive group) over all parameters."""
        norms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.abs() * p.grad if group["adaptive"] else p.grad
                norms.append(torch.linalg.vector_norm(g, 2))
        if not norms:
            return None
        device = norms[0].device
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), 2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save :math:`w` and move to :math:`w + \\epsilon` (uses the gradients in ``p.grad``).

        Parameters without a gradient are not perturbed. If the norm is zero (or not finite)
        :math:`\\epsilon = 0`: the weights are saved but left unchanged, never NaN.
        """
        if self._perturbed:
            raise RuntimeError(
                "SAM.first_step called twice without second_step; the saved weights would be lost"
            )
        norm = self._ascent_norm()
        usable = norm is not None and bool(torch.isfinite(norm)) and float(norm) > 0.0
        for group in self.param_groups:
            scale = group["rho"] / norm if usable else None
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "old_p" in state and state["old_p"].shape == p.shape:
                    state["old_p"].copy_(p)
                else:
                    state["old_p"] = p.detach().clone()
                if scale is None:
                    continue
                e = p.grad * scale.to(p.device, p.dtype)
                if group["adaptive"]:
                    e = e * p * p  # T^2 g with T = |w|
                p.add_(e)
        self._perturbed = True
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Copy the saved :math:`w` back exactly, then take the base optimizer's step.

        ``p.grad`` must hold the gradient at :math:`w + \\epsilon` (clipped, if wanted).
        """
        if not self._perturbed:
            raise RuntimeError("SAM.second_step called without a preceding first_step")
        for group in self.param_groups:
            for p in group["params"]:
                old = self.state[p].get("old_p") if p in self.state else None
                if old is not None:
                    p.copy_(old)
                    del self.state[p]["old_p"]
        self._perturbed = False
        self.base_optimizer.step()
        # Tell an lr scheduler that the optimizer stepped (it only watches SAM.step).
        self._opt_called = True
        if zero_grad:
            self.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        """One full SAM update; ``closure`` runs forward + backward and returns the loss.

        The closure is evaluated twice, each time on zeroed gradients: at :math:`w` (its loss
        is returned) and at :math:`w + \\epsilon`. It must not call ``optimizer.step``.
        BatchNorm models: freeze running statistics for the second call yourself (or use
        :func:`sam_step`).
        """
        if closure is None:
            raise TypeError(
                "SAM.step needs a closure that runs forward + backward and returns the loss; "
                "or call first_step() and second_step() around your own backward passes"
            )
        closure = torch.enable_grad()(closure)
        self.zero_grad(set_to_none=True)
        loss = closure()
        self.first_step(zero_grad=True)
        try:
            perturbed = closure()
        except BaseException:
            self._restore()
            raise
        self.perturbed_loss = perturbed.detach() if isinstance(perturbed, torch.Tensor) else None
        self.second_step()
        return loss

    @torch.no_grad()
    def _restore(self) -> None:
        """Undo a pending perturbation without stepping (used on error)."""
        for group in self.param_groups:
            for p in group["params"]:
                old = self.state[p].pop("old_p", None) if p in self.state else None
                if old is not None:
                    p.copy_(old)
        self._perturbed = False

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip the gradients of all parameters to a global norm (call before second_step).

        Returns the total norm before clipping, as ``torch.nn.utils.clip_grad_norm_``.
        """
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        return nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict; its param groups carry ``rho`` and ``adaptive``.

        The transient saved weights of a pending :meth:`first_step` are not included.
        """
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        # load_state_dict builds new group dicts: share them again.
        self.param_groups = self.base_optimizer.param_groups

    def __repr__(self) -> str:
        return f"SAM({self.base_optimizer!r})"


def _batchnorms(model: nn.Module) -> Iterator[_BatchNorm]:
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            yield m


def disable_running_stats(model: nn.Module) -> None:
    """Stop BatchNorm layers from updating running statistics (SAM's second forward).

    Sets ``track_running_stats = False`` on every BatchNorm layer (remembering the old value):
    in training mode the layer still normalises with batch statistics, but ``running_mean``,
    ``running_var`` and ``num_batches_tracked`` stay exactly as they are. Eval mode is
    unaffected. Undo with :func:`enable_running_stats`.
    """
    for m in _batchnorms(model):
        if not hasattr(m, _SAVED_FLAG):
            setattr(m, _SAVED_FLAG, m.track_running_stats)
        m.track_running_stats = False


def enable_running_stats(model: nn.Module) -> None:
    """Undo :func:`disable_running_stats` (restores each layer's ``track_running_stats``)."""
    for m in _batchnorms(model):
        if hasattr(m, _SAVED_FLAG):
            m.track_running_stats = getattr(m, _SAVED_FLAG)
            delattr(m, _SAVED_FLAG)


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: :func:`disable_running_stats` inside, :func:`enable_running_stats` after."""
    disable_running_stats(model)
    try:
        yield model
    finally:
        enable_running_stats(model)


def sam_step(
    model: nn.Module,
    optimizer: SAM,
    loss_fn: Callable[[], torch.Tensor],
    *,
    max_grad_norm: float | None = None,
) -> torch.Tensor:
    """One SAM update of ``model`` (plain or DistributedDataParallel); returns the loss at w.

    ``loss_fn()`` runs the forward pass on the current batch and returns the scalar loss
    (no backward; put ``autocast`` inside it if wanted). Sequence: first backward (inside
    ``model.no_sync()`` under DDP, so :math:`\\epsilon` uses the worker-local gradient, as
    the paper's m-sharpness), :meth:`SAM.first_step`, second forward/backward with BatchNorm
    running statistics frozen (all-reduced under DDP), optional clipping of that gradient to
    ``max_grad_norm``, :meth:`SAM.second_step`. The loss at w + ε is kept in
    ``optimizer.perturbed_loss``.
    """
    optimizer.zero_grad(set_to_none=True)
    no_sync = getattr(model, "no_sync", None)
    with no_sync() if callable(no_sync) else nullcontext():
        loss = loss_fn()
        loss.backward()
    optimizer.first_step(zero_grad=True)
    try:
        with frozen_running_stats(model):
            perturbed = loss_fn()
            perturbed.backward()
    except BaseException:
        optimizer._restore()
        raise
    optimizer.perturbed_loss = perturbed.detach()
    if max_grad_norm is not None:
        optimizer.clip_grad_norm_(max_norm=max_grad_norm)
    optimizer.second_step(zero_grad=True)
    return loss.detach()
