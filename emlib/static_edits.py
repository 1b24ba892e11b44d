"""Interventions as device-resident buffers for the static-cache sampler (``emlib.graph_sampler``): an
``Intervention`` or ``Stacked`` copied once per batch into buffers in the model's dtype and applied by forward hooks
doing only tensor ops on them (the formulas of ``Intervention.edit`` and ``Stacked.edit``), so a captured CUDA
graph step holds the edit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emlib.interventions import Intervention, Stacked
from emlib.models import residual


@dataclass(frozen=True)
class Layout:
    """Where an intervention edits and whether per row (a ``Stacked`` one): what a captured step's hooks do."""

    add: tuple[int, ...] = ()
    ablate: tuple[int, ...] = ()
    per_row: bool = False

    @staticmethod
    def of(intervention: Intervention | Stacked | None) -> Layout:
        """The layout of ``intervention`` (``None``: no hooks)."""
        if intervention is None:
            return Layout()
        units = intervention.units if isinstance(intervention, Stacked) else (intervention,)
        return Layout(tuple(sorted({ly for u in units for ly in u.add})),
                      tuple(sorted({ly for u in units for ly in u.ablate})), isinstance(intervention, Stacked))


class Edits:
    """An intervention's vectors on the device in the model's dtype: per layer [d] (one ``Intervention``) or
    [B, d] (a ``Stacked``: row ``i`` holds its unit's vector, zeros where the unit does nothing there)."""

    def __init__(self, layout: Layout, devices: Sequence[torch.device], width: int, rows: int, dtype: torch.dtype):
        self.layout = layout
        shape = (rows, width) if layout.per_row else (width,)
        self.add = {ly: torch.zeros(shape, dtype=dtype, device=devices[ly]) for ly in layout.add}
        self.ablate = {ly: torch.zeros(shape, dtype=dtype, device=devices[ly]) for ly in layout.ablate}
        self.tables: dict[tuple[str, int], torch.Tensor] = {}  # Stacked: [K, d] per (kind, layer)

    def load(self, intervention: Intervention | Stacked | None) -> None:
        """Copy ``intervention``'s vectors in (a ``Stacked`` one's tables; ``set_rows`` places them)."""
        for kind, buffers in (("add", self.add), ("ablate", self.ablate)):
            for layer, buf in buffers.items():
                if isinstance(intervention, Stacked):
                    vs = [getattr(u, kind).get(layer) for u in intervention.units]
                    table = torch.stack([torch.zeros(buf.shape[-1]) if v is None else v.float().cpu() for v in vs])
                    self.tables[kind, layer] = table.to(buf.device, buf.dtype)
                else:
                    buf.copy_(getattr(intervention, kind)[layer])

    def set_rows(self, units: torch.Tensor) -> None:
        """Rows ``0..len(units)`` take their units' vectors (``units`` [n] indexes the ``Stacked``'s units)."""
        for kind, buffers in (("add", self.add), ("ablate", self.ablate)):
            for layer, buf in buffers.items():
                table = self.tables[kind, layer]
                buf[: len(units)] = table[units.to(table.device)]

    def hook(self, layer: int) -> Callable[[nn.Module, Any, Any], Any]:
        """A forward hook on block ``layer``: its output edited as ``Intervention.edit`` / ``Stacked.edit`` do."""
        add, direction, per_row = self.add.get(layer), self.ablate.get(layer), self.layout.per_row

        def edit(module: nn.Module, args: Any, out: Any) -> Any:
            h = residual(out)  # [rows, seq, d_model]
            if direction is not None and per_row:
                u = direction[: h.shape[0]]
                h = h - torch.einsum("bsd,bd->bs", h, u)[..., None] * u[:, None, :]
            elif direction is not None:
                flat = h.reshape(-1, h.shape[-1])
                h = torch.addr(flat, flat @ direction, direction, alpha=-1).view(h.shape)
            if add is not None:
                h = h + (add[: h.shape[0], None, :] if per_row else add)
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return edit
