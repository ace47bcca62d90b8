"""Score one model many times while a few of its layers' weights change.

ALPSD's local selection scores dozens of candidate models on one fixed batch of validation
images, each differing from the last in the weights of a few layers. ``IncrementalForward``
keeps its own copy of the model, traced once with ``torch.fx``, in which

* every eval-mode ``BatchNorm2d`` that only follows a convolution is folded into it (the
  scale is applied to each weight written, as ``torch.nn.utils.fusion`` computes it), and
* every intermediate value of the last pass is kept, so that the next pass recomputes only
  the nodes downstream of the layers written since: upstream values are the same tensors.

A pass therefore equals a forward of the unfolded model with those weights to rounding (the
folding), and a whole pass of the folded model exactly. A model ``torch.fx`` cannot trace
(data-dependent control flow) is run whole each time; a written layer that the trace does not
call as a module, or kept values over ``max_bytes``, make the pass whole.
"""

from __future__ import annotations

import copy
import logging
import operator
from typing import Any, cast

import torch
from torch import Tensor, fx, nn

logger = logging.getLogger(__name__)

MAX_CACHE_BYTES = 2 << 30
"""Intermediate values kept between passes at most (beyond: whole passes)."""

# In-place operators a trace can record: their first operand may be a kept value.
_IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.iand,
             operator.ior}


class IncrementalForward:
    """``model(inputs)`` again and again while a few of ``model``'s layers get new weights.

    Args:
        model: the model (not modified: the instance keeps a channels-last eval-mode copy).
        inputs: the fixed batch.
        max_bytes: most bytes of intermediate values to keep.

    ``set_weight`` writes a layer's weight; calling the instance returns the output.
    """

    def __init__(self, model: nn.Module, inputs: Tensor, max_bytes: int = MAX_CACHE_BYTES
                 ) -> None:
        self.inputs = inputs
        self.max_bytes = max_bytes
        self.model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        self.values: dict[fx.Node, Any] = {}
        self.written: set[str] = set()
        self.scale: dict[str, Tensor] = {}
        self.nodes_run = 0
        self.graph: fx.GraphModule | None = None
        try:
            self.graph = fx.symbolic_trace(self.model)
        except Exception as error:  # any user model fx cannot trace: whole passes instead
            logger.debug("no incremental forward (trace failed: %s)", error)
            return
        self.modules = dict(self.graph.named_modules())
        self._fold_batch_norms()
        self.nodes = list(self.graph.graph.nodes)
        self._by_target: dict[str, list[fx.Node]] = {}
        for node in self.nodes:
            if node.op == "call_module":
                self._by_target.setdefault(str(node.target), []).append(node)

    def _fold_batch_norms(self) -> None:
        assert self.graph is not None
        calls: dict[str, int] = {}
        for node in self.graph.graph.nodes:
            if node.op == "call_module":
                calls[str(node.target)] = calls.get(str(node.target), 0) + 1
        for node in list(self.graph.graph.nodes):
            if node.op != "call_module" or len(node.args) != 1:
                continue
            norm, source = self.modules[str(node.target)], node.args[0]
            if not (isinstance(norm, nn.BatchNorm2d) and isinstance(source, fx.Node)
                    and source.op == "call_module" and len(source.users) == 1
                    and calls[str(source.target)] == 1 and norm.running_var is not None
                    and isinstance(self.modules[str(source.target)], nn.Conv2d)):
                continue
            conv = cast(nn.Conv2d, self.modules[str(source.target)])
            assert norm.running_mean is not None
            weight = norm.weight if norm.affine else torch.ones_like(norm.running_var)
            self.scale[str(source.target)] = (weight * torch.rsqrt(
                norm.running_var + norm.eps)).detach().reshape(-1, 1, 1, 1)
            fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, norm)
            _replace_module(self.graph, str(source.target), fused)
            self.modules[str(source.target)] = fused
            node.replace_all_uses_with(source)
            self.graph.graph.erase_node(node)
        self.graph.recompile()

    def set_weight(self, name: str, weight: Tensor) -> None:
        """Give module ``name`` this (unfolded) weight for the next passes."""
        module = self.modules[name] if self.graph is not None else self.model.get_submodule(
            name)
        target = cast(Tensor, module.weight)
        with torch.no_grad():
            value = weight.reshape(target.shape)
            if name in self.scale:  # as fuse_conv_bn_weights computes it
                value = (value * self.scale[name]).to(target.dtype)
            target.copy_(value)
        self.written.add(name)

    @torch.no_grad()
    def __call__(self) -> Tensor:
        """The output on the batch with the weights written so far."""
        stale = self._stale()
        self.written = set()
        if self.graph is None:
            return cast(Tensor, self.model(self.inputs))
        output: Any = None
        for node in self.nodes:
            if node not in stale:
                continue
            self.nodes_run += 1
            if node.op == "output":
                output = fx.node.map_arg(node.args[0], self.values.__getitem__)
            else:
                self.values[node] = self._run(node)
        if output is None:  # nothing was written: the last pass's output
            output = fx.node.map_arg(self.nodes[-1].args[0], self.values.__getitem__)
        if self._bytes() > self.max_bytes:
            logger.debug("incremental forward keeps no values: over %d bytes", self.max_bytes)
            self.values = {}
            self.max_bytes = -1  # from now on every pass is whole
        return cast(Tensor, output)

    def _stale(self) -> set[fx.Node]:
        """The nodes to recompute: all on the first (or a whole) pass, else those downstream
        of a written layer."""
        if not self.values:
            return set(self.nodes) if self.graph is not None else set()
        stale: set[fx.Node] = set()
        stack = []
        for name in self.written:
            found = self._by_target.get(name)
            if not found:  # not called as a module (a functional use): recompute everything
                return set(self.nodes)
            stack += found
        while stack:
            node = stack.pop()
            if node not in stale:
                stale.add(node)
                stack += node.users
        return stale

    def _run(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.inputs
        args = fx.node.map_arg(node.args, self.values.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, self.values.__getitem__)
        assert isinstance(args, tuple) and isinstance(kwargs, dict)
        if node.op == "get_attr":
            value: Any = self.graph
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        if self._changes_input(node) and not self._owns_input(node):
            first = args[0]
            args = (first.clone() if isinstance(first, Tensor) else first, *args[1:])
        if node.op == "call_module":
            return self.modules[str(node.target)](*args, **kwargs)
        if node.op == "call_method":
            self_arg, *rest = args
            return getattr(self_arg, str(node.target))(*rest, **kwargs)
        assert callable(node.target)
        return node.target(*args, **kwargs)

    def _changes_input(self, node: fx.Node) -> bool:
        """Whether ``node`` may write into its first argument (``ReLU(inplace=True)``,
        ``x += y``, ``x.add_(y)``, ``F.relu(x, inplace=True)``)."""
        if not node.args:
            return False
        if node.op == "call_module":
            return getattr(self.modules[str(node.target)], "inplace", False) is True
        name = (str(node.target) if node.op == "call_method"
                else getattr(node.target, "__name__", ""))
        return (node.target in _IN_PLACE or node.kwargs.get("inplace") is True
                or name.endswith("_"))

    def _owns_input(self, node: fx.Node) -> bool:
        """Whether ``node`` may write into its first argument's kept value: a computed value
        (not the batch, not a parameter, not a view of another kept value) that ``node`` alone
        reads, while ``node`` reads nothing else, so that both are always recomputed together
        (a copy would cost an activation-sized copy per pass)."""
        first = node.args[0]
        if not (isinstance(first, fx.Node) and first.op.startswith("call")
                and len(first.users) == 1 and len(node.all_input_nodes) == 1):
            return False
        value = self.values[first]
        if not isinstance(value, Tensor):
            return False
        storage = value.untyped_storage().data_ptr()
        return not any(isinstance(self.values[source], Tensor)
                       and self.values[source].untyped_storage().data_ptr() == storage
                       for source in first.all_input_nodes)

    def _bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.values.values()
                   if isinstance(v, Tensor))


def _replace_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)
