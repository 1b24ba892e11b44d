"""Steering and ablation of the residual stream, applied with nnsight.

Used by chapters 02 (steering sweep), 03 (layer-wise, single-direction and transfer
ablation) and 05 (steering for self-correction). An ``Intervention`` edits the output of
decoder blocks at every position of every forward pass it is active for:

- steering: ``x' = x + λ·v`` at layer ℓ;
- ablation: ``x' = x − v̂ v̂ᵀ x`` (the component along the unit vector ``v̂`` removed).

``run(model, intervention, fn)`` runs ``fn`` — anything that calls the model any number of
times, e.g. one teacher-forced pass or the whole batched KV-cache sampling loop of
``emlib.generate`` — inside one nnsight trace whose block edits every call of the chosen
layers (``tracer.all()``), so every generated step is steered, not only the prefill. It
composes with PEFT adapters: nnsight wraps whatever module tree the model has.

``Stacked`` holds K interventions ("units") for one batched run in which each row of the batch
is under its own unit (chapters 2 and 3 sample every random control unit of a rank test in one
run): the sampler tells it which unit each row of the next forward pass is (``Stacked.rows``).

``hooked`` is the same edit with plain PyTorch forward hooks: the reference the tests
compare nnsight against, and the baseline of ``bench/bench_interventions.py``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

try:  # nnsight mounts .save on every object; anyio's asyncio backend (the OpenAI client's) must
    import anyio._backends._asyncio  # noqa: F401  # define its classes first, or it refuses them
except ImportError:  # pragma: no cover - anyio is optional
    pass
import nnsight
import torch
from torch import nn

from emlib.models import decoder_layers, residual, residual_width

T = TypeVar("T")


class InterventionError(ValueError):
    """An intervention that does not fit the model (layer out of range, wrong width)."""


def _on(owner: Any, name: tuple[str, int], v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``v`` on ``h``'s device in ``h``'s dtype, copied once per (name, device, dtype) and kept in ``owner``'s private
    ``_copies`` (outside its fields: not in equality, repr or ``identity``), so a hook on a GPU makes no host→device
    copy per layer per decoding step. A model spread over GPUs (``device_map: auto``) gets one copy per layer's GPU."""
    copies = owner.__dict__.setdefault("_copies", {})
    key = (*name, h.device, h.dtype)
    on = copies.get(key)
    if on is None:
        with torch.inference_mode(False):  # a plain tensor, usable later with autograd too (not an inference one)
            on = copies[key] = v.to(h.device, h.dtype)
    return on


def _fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Intervention:
    """Edits of decoder-block outputs, keyed by layer index (0-based; block ℓ's output).

    ``ablate[ℓ]`` is a direction [d_model] projected out at layer ℓ (normalised here);
    ``add[ℓ]`` a vector [d_model] added at layer ℓ (already scaled). Ablation is applied
    before addition where a layer has both. ``label`` names it in tables and cache keys.
    """

    add: Mapping[int, torch.Tensor] = field(default_factory=dict)
    ablate: Mapping[int, torch.Tensor] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        units = {}
        for layer, v in self.ablate.items():
            norm = v.float().norm()
            if not torch.isfinite(norm) or norm == 0:
                raise InterventionError(f"cannot ablate a zero or non-finite direction at layer {layer}")
            units[int(layer)] = (v.float() / norm).detach()
        object.__setattr__(self, "ablate", units)
        object.__setattr__(self, "add", {int(k): v.float().detach() for k, v in self.add.items()})

    def __getstate__(self) -> dict[str, Any]:  # a pickle holds the vectors, not their device copies
        return {k: v for k, v in self.__dict__.items() if k != "_copies"}

    @property
    def layers(self) -> list[int]:
        """The layers it edits, ascending (the order a forward pass reaches them)."""
        return sorted(set(self.add) | set(self.ablate))

    def edit(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """The edited residual stream at ``layer``: ``h`` [batch, seq, d_model] -> same shape."""
        if layer in self.ablate:
            u = _on(self, ("ablate", layer), self.ablate[layer], h)
            flat = h.reshape(-1, h.shape[-1])
            h = torch.addr(flat, flat @ u, u, alpha=-1).view(h.shape)  # h − (h·u) uᵀ, one fused update
        if layer in self.add:
            h = h + _on(self, ("add", layer), self.add[layer], h)
        return h

    def identity(self) -> dict[str, Any]:
        """A JSON-able description (layers and vector hashes) for provenance and cache keys."""
        return {
            "label": self.label,
            "add": {str(k): _fingerprint(v) for k, v in sorted(self.add.items())},
            "ablate": {str(k): _fingerprint(v) for k, v in sorted(self.ablate.items())},
        }

    def check(self, model: nn.Module) -> None:
        """Raise ``InterventionError`` unless every layer exists and every vector has the model's width."""
        n = len(decoder_layers(model))
        width = residual_width(model)
        for kind, vectors in (("add", self.add), ("ablate", self.ablate)):
            for layer, v in vectors.items():
                if not 0 <= layer < n:
                    raise InterventionError(f"{self.label or 'intervention'}: layer {layer} ({kind}) is outside "
                                            f"the model's {n} layers (0..{n - 1})")
                if v.shape != (width,):
                    raise InterventionError(f"{self.label or 'intervention'}: {kind} vector at layer {layer} has "
                                            f"shape {tuple(v.shape)}, the model's residual stream is {width} wide")


class _Rows:
    """The unit of each row of the next forward pass (set by the sampler before each call), and its copy on each
    device a layer of the model lives on (made once per ``set_rows``, not per layer)."""

    units: torch.Tensor | None = None
    on: dict[torch.device, torch.Tensor]

    def __init__(self) -> None:
        self.on = {}

    def at(self, device: torch.device) -> torch.Tensor:
        """``units`` [batch] on ``device``."""
        assert self.units is not None
        got = self.on.get(device)
        if got is None:
            got = self.on[device] = self.units.to(device)
        return got


@dataclass(frozen=True)
class Stacked:
    """K interventions ("units") applied row by row in one batch: row ``i`` of a forward pass is edited by unit
    ``units[i]``. Per layer, ``add[ℓ]`` [K, d_model] holds each unit's added vector (zeros for a unit that adds
    nothing there) and ``ablate[ℓ]`` [K, d_model] each unit's unit direction (zeros: nothing projected out), so
    units may differ in kind and layers; ``None`` or an empty ``Intervention`` is the unedited unit. Chapters 2, 3.
    """

    units: tuple[Intervention, ...]
    label: str = ""
    rows: _Rows = field(default_factory=_Rows, compare=False, repr=False)

    def __post_init__(self) -> None:
        units = tuple(Intervention() if u is None else u for u in self.units)
        if not units:
            raise InterventionError("a stacked intervention needs at least one unit")
        object.__setattr__(self, "units", units)

    def _table(self, kind: str, layer: int) -> torch.Tensor | None:
        vs = [getattr(u, kind).get(layer) for u in self.units]
        if all(v is None for v in vs):
            return None
        width = next(v for v in vs if v is not None).shape[0]
        return torch.stack([torch.zeros(width) if v is None else v for v in vs])

    def __getstate__(self) -> dict[str, Any]:  # a pickle holds the vectors, not their device copies
        return {k: v for k, v in self.__dict__.items() if k != "_copies"}

    @property
    def layers(self) -> list[int]:
        """Every layer any unit edits, ascending."""
        return sorted({layer for u in self.units for layer in u.layers})

    def edit(self, layer: int, h: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` [batch, seq, d_model] with row ``i`` edited by unit ``units[i]`` ([batch] ints; default: the rows
        last set by ``set_rows``): per row ``x − (x·û)û`` then ``+ add``, as ``Intervention.edit``."""
        given = units
        units = self.rows.units if units is None else units
        if units is None or len(units) != h.shape[0]:
            raise InterventionError(f"{self.label or 'stacked intervention'}: {h.shape[0]} rows but unit indices "
                                    f"{None if units is None else len(units)}")
        units = self.rows.at(h.device) if given is None else units.to(h.device)
        ablate, add = self._tables()
        if layer in ablate:
            u = _on(self, ("ablate", layer), ablate[layer], h)[units]  # [batch, d_model]
            h = h - torch.einsum("bsd,bd->bs", h, u)[..., None] * u[:, None, :]
        if layer in add:
            h = h + _on(self, ("add", layer), add[layer], h)[units][:, None, :]
        return h

    def _tables(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        cached = self.__dict__.get("_stacked")
        if cached is None:
            cached = tuple({layer: t for layer in self.layers if (t := self._table(kind, layer)) is not None}
                           for kind in ("ablate", "add"))
            object.__setattr__(self, "_stacked", cached)
        return cached

    def set_rows(self, units: torch.Tensor) -> None:
        """Name the unit [batch] of each row of the next forward passes (the sampler calls it as rows change)."""
        self.rows.units, self.rows.on = units, {}

    def identity(self) -> dict[str, Any]:
        """Every unit's ``Intervention.identity``, in order, for cache keys."""
        return {"label": self.label, "units": [u.identity() for u in self.units]}

    def check(self, model: nn.Module) -> None:
        """``Intervention.check`` of every unit."""
        for u in self.units:
            u.check(model)


def steer(vector: torch.Tensor, layer: int, scale: float, label: str = "") -> Intervention:
    """Add ``scale * vector`` [d_model] to the residual stream after block ``layer``, at every position."""
    return Intervention(add={layer: scale * vector.float()}, label=label or f"steer L{layer} x{scale:g}")


def ablate(directions: Mapping[int, torch.Tensor], label: str = "") -> Intervention:
    """Project each ``directions[ℓ]`` [d_model] out of the residual stream after block ℓ.

    Layer-wise ablation passes each layer's own vector; single-direction ablation passes
    one vector at every layer: ``ablate({l: v for l in range(n_layers)})``.
    """
    return Intervention(ablate=dict(directions), label=label or f"ablate {len(directions)} layers")


def wrap(model: nn.Module) -> tuple[nnsight.NNsight, list[Any]]:
    """nnsight's wrapper of ``model`` and the envoys of its decoder blocks (built once per model).

    Kept on the model itself (not in a global table), so it is freed with the model.
    """
    wrapped = model.__dict__.get("_emlib_nnsight")
    if wrapped is None:
        envoy = nnsight.NNsight(model)
        paths = {id(m): name for name, m in model.named_modules()}
        layers = [envoy_at(envoy, paths[id(block)]) for block in decoder_layers(model)]
        wrapped = model.__dict__["_emlib_nnsight"] = (envoy, layers)
    return wrapped


def envoy_at(envoy: nnsight.NNsight, path: str) -> Any:
    """The envoy of the submodule at dotted ``path`` (as in ``named_modules``); used to read LoRA scalars too."""
    e: Any = envoy
    for part in path.split("."):
        e = e[int(part)] if part.isdigit() else getattr(e, part)
    return e


def run(model: nn.Module, intervention: Intervention | Stacked | None, fn: Callable[[], T]) -> T:
    """Call ``fn()`` with ``intervention`` applied to every forward pass of ``model`` it makes.

    ``fn`` may call the model once (teacher forcing) or many times (a sampling loop); each
    call's outputs of the intervention's layers are edited (a ``Stacked`` one row by row, each row by the unit
    its sampler names with ``Stacked.set_rows``). ``None`` runs ``fn`` as is.
    Returns what ``fn`` returns.
    """
    if intervention is None or not intervention.layers:
        return fn()
    intervention.check(model)
    envoy, blocks = wrap(model)
    layers = [(layer, blocks[layer]) for layer in intervention.layers]
    result: list[T] = []

    def call(f: Callable[[], T]) -> None:  # nnsight needs one positional input to open its invoke
        result.append(f())

    with warnings.catch_warnings():
        # an open tracer.all() loop ends when fn returns; nnsight warns that it "was never reached"
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with envoy.trace(fn, fn=call) as tracer:
            for _ in tracer.all():
                for layer, block in layers:
                    out = block.output
                    edited = intervention.edit(layer, residual(out))
                    block.output = (edited, *out[1:]) if isinstance(out, tuple) else edited
    if not result:
        raise RuntimeError("the intervened function did not return (see the error above)")
    return result[0]


@contextmanager
def hooked(model: nn.Module, intervention: Intervention | Stacked) -> Iterator[None]:
    """The same edits as ``run``, with plain PyTorch forward hooks (reference for tests and bench/)."""
    intervention.check(model)
    blocks = decoder_layers(model)

    def make_hook(layer: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, out: Any) -> Any:
            edited = intervention.edit(layer, residual(out))
            return (edited, *out[1:]) if isinstance(out, tuple) else edited

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in intervention.layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
