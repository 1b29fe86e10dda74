"""Forward passes that recompute only what depends on one layer (``torch.fx`` partial evaluation).

Measuring a layer's sensitivity (:mod:`lrviz.sensitivity`) runs the model once per grid rank with only
that layer replaced. Everything upstream of the layer — and every branch that does not depend on it,
such as a residual path around it — is the same for every rank, so :class:`DownstreamRunner` runs it
once per layer: it keeps the values the downstream part reads (the *frontier*) and, for each rank,
runs only the downstream nodes (:class:`torch.fx.Interpreter` with a pre-filled environment). The
logits are the same as whole forward passes (tested). It falls back to whole forward passes when the
model cannot be traced, or when the frontier of the whole calibration set would exceed
:data:`FRONTIER_BYTES`; :meth:`DownstreamRunner.begin` says which path a layer takes.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from .errors import LrvizError

__all__ = ["DownstreamRunner", "forward_logits", "FRONTIER_BYTES"]

log = logging.getLogger(__name__)

#: Most memory the upstream values kept for downstream-only passes may take (else whole passes).
FRONTIER_BYTES = 2 * 2**30


def forward_logits(model: nn.Module, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Whole forward passes of ``x`` in batches: the logits ``(N, num_classes)``, float32 on the CPU."""
    outs = []
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i : i + batch_size].to(device))
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise LrvizError("The model must return logits of shape N x num_classes.")
        outs.append(out.float().cpu())
    return torch.cat(outs)


class DownstreamRunner:
    """Logits of ``work`` on ``x`` with one layer replaced, recomputing only what depends on it.

    Use: :meth:`begin` (layer name) → replace the layer in :attr:`model` → :meth:`logits` (as often as
    needed) → :meth:`end`. When ``partial`` is off or the model cannot be traced, every
    :meth:`logits` call is a whole forward pass (and :meth:`begin` returns False).
    """

    def __init__(self, work: nn.Module, x: torch.Tensor, batch_size: int, dev, partial: bool = True):
        self.work, self.x, self.batch_size, self.dev = work, x, batch_size, dev
        self.gm = None
        if partial:
            try:
                self.gm = torch.fx.symbolic_trace(work)
            except Exception as exc:  # dynamic control flow etc.: whole forward passes instead
                log.info("torch.fx cannot trace the model (%s): sensitivities use whole forward passes", exc)
        self.envs: list[dict] | None = None

    @property
    def model(self) -> nn.Module:
        """The module whose layers are replaced: the traced graph, else ``work`` itself."""
        return self.gm if self.gm is not None else self.work

    def begin(self, name: str) -> bool:
        """Run the original model once, keeping the frontier values of layer ``name``'s downstream
        part. Returns True when :meth:`logits` will run only the downstream part, False when it will
        run whole passes (untraced model, layer not on the path to the output, frontier too large)."""
        self.envs = None
        if self.gm is None:
            return False
        down = self._downstream(name)
        if down is None:
            return False
        frontier = {a for n in down for a in n.all_input_nodes if a not in down}
        rest = [n for n in self.gm.graph.nodes if n not in down and n not in frontier]
        self.envs = self._frontier_values(name, frontier, rest)
        return self.envs is not None

    def _downstream(self, name: str) -> set | None:
        """The graph nodes that depend on layer ``name`` (None unless the output is one of them)."""
        graph = self.gm.graph
        starts = [n for n in graph.nodes if n.op == "call_module" and n.target == name]
        down: set = set()
        stack = list(starts)
        while stack:
            n = stack.pop()
            if n not in down:
                down.add(n)
                stack.extend(n.users)
        out_nodes = [n for n in graph.nodes if n.op == "output"]
        if not starts or not out_nodes or out_nodes[0] not in down:
            return None
        return down

    def _frontier_values(self, name: str, frontier: set, rest: list) -> list[dict] | None:
        """Per batch, the environment of a downstream-only pass: the frontier's values, the rest
        unset. None when keeping them for every batch would take more than :data:`FRONTIER_BYTES`."""

        class _Keep(torch.fx.Interpreter):
            def run_node(self, n):
                v = super().run_node(n)
                if n in frontier:
                    kept[n] = v
                return v

        envs = []
        batches = range(0, self.x.shape[0], self.batch_size)
        with torch.inference_mode():
            for i in batches:
                kept: dict = {}
                _Keep(self.gm).run(self.x[i : i + self.batch_size].to(self.dev))
                if not envs:  # memory guard: keeping the frontier of every batch must stay small
                    size = sum(v.numel() * v.element_size() for v in kept.values() if isinstance(v, torch.Tensor))
                    if size * len(batches) > FRONTIER_BYTES:
                        log.info("layer %s: upstream values too large to keep (%.1f GB): whole forward passes", name,
                                 size * len(batches) / 1e9)
                        return None
                env = dict.fromkeys(rest)
                env.update(kept)
                envs.append(env)
        return envs

    def logits(self) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of :attr:`model` as it is now (float32, CPU)."""
        if self.envs is None:
            return forward_logits(self.model, self.x, self.batch_size, self.dev)
        outs = []
        for i, env in zip(range(0, self.x.shape[0], self.batch_size), self.envs):
            out = torch.fx.Interpreter(self.gm).run(self.x[i : i + self.batch_size].to(self.dev), initial_env=dict(env))
            outs.append(out.float().cpu())
        return torch.cat(outs)

    def end(self) -> None:
        self.envs = None
