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
import pickletools
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomkit.data import DataSpec, load_split
from geomkit.errors import CheckpointError, DataError, GeomkitError
from geomkit.io import atomic_write, os_cause
from geomkit.models import build_model
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
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module  # unwrap DDP (a model's own child named `module` stays)
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
    #: what identifies a checkpoint that is not a file of its own (an imported one: its
    #: weights, model and data); None: the SHA-256 of the file
    identity: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """``model/optimizer``, e.g. ``vit-tiny/sam`` (optimizer from the training config)."""
        return f"{self.model_name}/{self.config.get('label') or self.config.get('optimizer', '?')}"

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def sha256(self) -> str:
        return self.identity or self._sha256

    @cached_property
    def _sha256(self) -> str:
        return file_sha256(self.path)

    def analysis_data(
        self, split: str = "train", n: int | None = None
    ) -> tuple[Any, torch.Tensor | None]:
        """The analysis-data rule: the first ``n`` examples of ``split`` in the source's
        canonical order, with this checkpoint's eval preprocessing and no augmentation.

        The training subset (``subset`` < 1) is *not* applied here: every checkpoint of a
        source measures on the same examples, whatever fraction it was trained on.

        Returns ``(x, y)`` tensors, except for an ``imagefolder`` source whose ``n``
        float32 images would exceed :data:`geomkit.data.imagefolder.STREAM_ABOVE_BYTES`
        (1 GiB, e.g. more than 1783 images at 224 px): then ``(batches, None)``, a
        re-iterable :class:`~geomkit.data.ImageFolderBatches` that decodes the files batch
        by batch on every pass, and no separate targets. Either pair is the ``(data,
        targets)`` that every measurement takes, and ``len()`` of its first element is the
        number of examples; only the first ``n`` files are decoded.
        """
        spec = self.data_spec.replace(augment=False, subset=1.0)
        if spec.source == "imagefolder":
            from geomkit.data import imagefolder

            return imagefolder.analysis_data(spec, split, n)
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
            model = build_model(self.model_name, self.model_kwargs, trusted=False)
        p = next(self.model.parameters(), None)
        return model.to(p.device if p is not None else "cpu").eval()


# -- reading: every way a file can fail to be a checkpoint, in one plain sentence ----------

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # terminal colour/bold codes in torch's text
_ZIP = b"PK\x03\x04"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_PICKLE = 0x80  # the PROTO opcode starting every binary pickle (old-style torch files too)
_RESAVE = ("re-save the weights with geomkit.save_checkpoint (a model from "
           "geomkit.models.build, then load_state_dict)")


def _plain(text: Any) -> str:
    """``text`` on one line, without ANSI escape codes."""
    return " ".join(_ANSI.sub("", str(text)).split())


def _summary(text: Any, limit: int = 120) -> str:
    """The first sentence of a library's message (whole words, at most ~``limit`` chars)."""
    t = _plain(text)
    m = re.match(r"(.+?[.;:!?])(\s|$)", t)
    if m and len(m.group(1)) >= 12:
        t = m.group(1).rstrip(".;:")
    if len(t) > limit:
        t = t[:limit].rsplit(" ", 1)[0] + " ..."
    return t


def _names(items: Any, n: int = 3) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def _refused_global(text: str) -> str | None:
    """The global (``module.name``) torch's weights-only unpickler refused, if it says."""
    for pat in (r"GLOBAL ([\w.]+) was not an allowed global",
                r"unsupported GLOBAL ([\w.]+)",
                r"but got <class '([\w.]+)'>",
                r"GLOBAL ([\w.]+)"):
        m = re.search(pat, text)
        if m:
            return m.group(1)
    return None


def _pickled_global(path: Path, max_ops: int = 200_000) -> str | None:
    """The first global (class or function) a plain pickle file would import, found by
    reading its opcodes with :mod:`pickletools` -- nothing is imported or run."""
    strings: list[str] = []
    memo: dict[int, Any] = {}
    last: Any = None
    try:
        with open(path, "rb") as f:
            for k, (op, arg, _) in enumerate(pickletools.genops(f)):
                if k >= max_ops:
                    return None
                if op.name == "GLOBAL":  # arg: "module name"
                    return ".".join(str(arg).split(" ", 1))
                if op.name == "STACK_GLOBAL":
                    return ".".join(strings[-2:]) if len(strings) >= 2 else "an unnamed global"
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    strings.append(str(arg))
                    last = str(arg)
                    continue
                if op.name == "MEMOIZE":
                    memo[len(memo)] = last
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = last
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    last = memo.get(int(arg))
                    if isinstance(last, str):
                        strings.append(last)
                    continue
                last = None
    except Exception:  # a damaged or truncated pickle: nothing more to say about it
        return None
    return None


def _ends_inside(p: Path, name: str) -> bool:
    """Whether the file ends inside the name of a global: a pickle cut off there reads
    as a global torch refuses (``collections.OrderedDic``, its last letter lost with the
    missing newline), not as an early end."""
    tail = name.rsplit(".", 1)[-1].encode()
    try:
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - 512))
            end = f.read()
    except OSError:
        return False
    return b"\n" in end and not end.endswith(b"\n") and end.rsplit(b"\n", 1)[1].startswith(tail)


def _code_message(p: Path, name: str) -> str:
    return (f"{p} is not a weights-only file: it holds pickled Python objects (the global "
            f"`{name}`) that geomkit will not execute; if you trust its source, load it in "
            f"Python and {_RESAVE}")


def _head(p: Path, n: int = 16) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise CheckpointError(f"cannot read {p}: {os_cause(e)}") from None


def _check_zip(p: Path) -> None:
    """A torch zip archive that is complete and whose entries match their CRC-32.

    torch reads the stored weights without checking their checksums, so bytes changed
    after the file was written (a bad copy, a failing disk) would load silently.
    """
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            if not any(i.filename.endswith("data.pkl") for i in infos):
                npy = any(i.filename.endswith(".npy") for i in infos)
                what = "a numpy .npz archive" if npy else "a zip archive"
                raise CheckpointError(f"{p} is {what}, not a torch checkpoint; pass a file "
                                      "written by `geomkit train` (geomkit.save_checkpoint)")
            for info in infos:
                if info.CRC == 0 and info.file_size:  # written without checksums
                    continue
                with z.open(info) as f:
                    while f.read(1 << 22):
                        pass
    except CheckpointError:
        raise
    except OSError as e:
        if e.errno is not None:
            raise CheckpointError(f"cannot read {p}: {os_cause(e)}") from None
        raise CheckpointError(_zip_damage(p, e)) from None
    except Exception as e:  # zipfile's view of damaged bytes: BadZipFile, UnicodeDecodeError...
        raise CheckpointError(_zip_damage(p, e)) from None


def _zip_damage(p: Path, e: BaseException) -> str:
    m = re.search(r"Bad CRC-32 for file '([^']+)'", str(e))
    if m:
        return (f"{p} is not a readable checkpoint: it is damaged (its entry {m.group(1)} fails "
                "its CRC-32 check: bytes changed after it was written); copy the file again or "
                "write it again")
    if "File is not a zip file" in str(e):  # no end-of-archive record: cut short, most likely
        cause = "the zip archive has no end record"
    else:
        cause = "its zip directory or entry headers are unreadable"
    return (f"{p} is not a readable checkpoint: it is truncated or damaged "
            f"({p.stat().st_size:,} bytes; {cause}); copy the file again or write it again")


def _unreadable(p: Path, head: bytes, e: BaseException) -> str:
    """One sentence for a file ``torch.load(weights_only=True)`` refused."""
    inner = e.__context__ if isinstance(e.__context__, pickle.UnpicklingError) else e
    text = _plain(inner) or type(inner).__name__
    pickled = head[:1] == bytes([_PICKLE])
    if isinstance(e, pickle.UnpicklingError) and (pickled or head.startswith(_ZIP)):
        name = _refused_global(text)
        if name is None and pickled:
            name = _pickled_global(p)
        if name is not None and pickled and _ends_inside(p, name):
            return (f"{p} is not a readable checkpoint: it is truncated "
                    f"({p.stat().st_size:,} bytes; an old-style torch file that ends early); "
                    "copy the file again or write it again")
        if name is not None:
            return _code_message(p, name)
        if "Unsupported operand" in text and pickled:
            return (f"{p} is a plain pickle (pickle.dump), not a torch checkpoint; pass a file "
                    "written by `geomkit train` (geomkit.save_checkpoint)")
        if "Weights only load failed" in _plain(e):
            return (f"{p} is not a weights-only file: torch's safe loader refused it "
                    f"({_summary(text)}); if you trust its source, load it in Python and {_RESAVE}")
    if head.startswith(_ZIP):  # complete and intact (checked): torch could not use it
        return f"{p} is not a readable checkpoint ({_summary(text)})"
    if pickled:
        if isinstance(e, EOFError) or re.search(r"EOF|ran out of input", text, re.I):
            return (f"{p} is not a readable checkpoint: it is truncated ({p.stat().st_size:,} "
                    "bytes; an old-style torch file that ends early); copy the file again or "
                    "write it again")
        if "magic number" in text:
            return (f"{p} is a plain pickle (pickle.dump), not a torch checkpoint; pass a file "
                    "written by `geomkit train` (geomkit.save_checkpoint)")
        return (f"{p} is not a readable checkpoint: a damaged or unsupported old-style torch "
                f"file ({_summary(text)})")
    try:
        sample = head.decode("utf-8")
        is_text = all(c.isprintable() or c in "\t\r\n" for c in sample)
    except UnicodeDecodeError:
        is_text = False
    what = "a text file" if is_text else f"unknown content starting {head[:8].hex(' ')}"
    return (f"{p} is not a readable checkpoint: not a torch file ({what}); pass a checkpoint "
            "written by `geomkit train` (geomkit.save_checkpoint)")


def _describe(payload: Any) -> str:
    if isinstance(payload, dict):
        keys = [repr(k) for k in payload]
        return f"a dict with keys {_names(keys, 4)}" if keys else "an empty dict"
    return f"a {type(payload).__name__}"


def _not_geomkit(p: Path, payload: Any) -> str:
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if isinstance(fmt, str) and fmt.startswith("geomkit-checkpoint/"):
        return (f"{p} is a geomkit checkpoint of format {fmt!r}, which this geomkit cannot "
                f"read (it reads {FORMAT!r}); use the geomkit version that wrote it")
    if (isinstance(payload, dict) and payload
            and all(isinstance(v, torch.Tensor) for v in payload.values())):
        n = len(payload)
        return (f"{p} holds a bare state_dict ({n} tensor{'s' if n > 1 else ''}), not a "
                "geomkit checkpoint, which also names the model; measure it with --model SPEC "
                f"--weights {p} --data SOURCE, or write one with `geomkit import`")
    return (f"{p} is a torch file but not a geomkit checkpoint (no format {FORMAT!r}; it holds "
            f"{_describe(payload)}); pass a file written by `geomkit train` or `geomkit "
            "import` (a state dict nested in it: --model SPEC --weights FILE)")


def _shape(t: Any) -> str:
    shape = getattr(t, "shape", None)
    if shape is None:
        return type(t).__name__
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def _misfit(state: dict, model: nn.Module) -> str | None:
    """What keeps ``state`` from loading into ``model``: missing and unexpected names and
    tensors of other shapes (None if it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} is {_shape(state[k])} in the file but {_shape(own[k])} in the model"
              for k in own if k in state and _shape(state[k]) != _shape(own[k])]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor{'s' if len(shapes) > 1 else ''} of another shape "
                     f"({_names(shapes, 2)})")
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    return "; ".join(parts) or None


def load_checkpoint(path: str | Path | Checkpoint,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Load a geomkit checkpoint (``weights_only=True``) and rebuild its model in eval mode.

    ``path`` may also be a run directory holding ``last.pt``.  Every failure a user can
    cause raises :class:`~geomkit.errors.CheckpointError` with a one-line message that
    says what the file is: missing, a directory, empty, truncated, damaged (a zip entry
    whose CRC-32 does not match: torch itself would load the changed weights), not a
    torch file (text, HDF5, npz, a plain pickle), a pickle that carries code (the global
    torch refused is named; it is never executed), a bare ``state_dict`` or another
    torch file, weights that do not fit the named model, an unknown model.
    """
    if isinstance(path, Checkpoint):  # already loaded (e.g. geomkit.imported.import_weights)
        path.model.to(device)
        return path
    if str(path) == "-":
        raise CheckpointError("a checkpoint cannot be read from standard input ('-'); "
                              "pass the path of a .pt file")
    p = Path(path)
    if p.is_dir() and (p / "last.pt").is_file():
        p = p / "last.pt"
    if not p.exists():
        raise CheckpointError(f"no such checkpoint: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a directory without last.pt; pass a checkpoint file "
                              "or a run directory of `geomkit train`")
    if not p.is_file():
        raise CheckpointError(f"not a checkpoint file: {p}")
    head = _head(p)
    if not head:
        raise CheckpointError(f"{p} is not a readable checkpoint: it is empty (0 bytes); "
                              "write it again")
    if head.startswith(_HDF5):
        raise CheckpointError(f"{p} is an HDF5 file (a geomkit results or landscape file?), "
                              "not a checkpoint; pass a .pt file written by `geomkit train`")
    if head.startswith(_ZIP):
        _check_zip(p)
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": a plain pickle
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            payload = torch.load(p, map_location="cpu", weights_only=True)
    except OSError as e:
        if e.errno is not None:
            raise CheckpointError(f"cannot read {p}: {os_cause(e)}") from None
        raise CheckpointError(_unreadable(p, head, e)) from None
    except Exception as e:  # arbitrary bytes: any failure of torch's reader is the file's
        raise CheckpointError(_unreadable(p, head, e)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(_not_geomkit(p, payload))
    try:
        name = payload["model"]["name"]
        kwargs = dict(payload["model"]["kwargs"])
        try:
            # trusted=False: a file may not name arbitrary code as its model factory
            model = build_model(name, kwargs, trusted=False)
        except GeomkitError as e:
            raise CheckpointError(f"{p}: {_plain(e)}") from None
        state = payload["state_dict"]
        if not isinstance(state, dict):
            raise TypeError(f"its state_dict is {_describe(state)}")
        misfit = _misfit(state, model)
        if misfit:
            raise CheckpointError(f"{p}: the weights do not fit model {name!r} {kwargs}: "
                                  f"{misfit}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:  # e.g. a value that is not a tensor
            raise CheckpointError(f"{p}: the weights do not fit model {name!r}: "
                                  f"{_summary(str(e).strip().splitlines()[-1])}") from None
        try:
            data_spec = DataSpec.from_dict(payload["data"])
        except GeomkitError as e:
            raise CheckpointError(f"{p}: bad data spec: {_plain(e)}") from None
        step, epoch = int(payload.get("step", 0)), int(payload.get("epoch", 0))
    except KeyError as e:
        raise CheckpointError(f"{p} is a damaged geomkit checkpoint (it has no "
                              f"{_plain(e.args[0] if e.args else e)!r} entry)") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"{p} is a damaged geomkit checkpoint ({type(e).__name__}: {_summary(e)})"
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
