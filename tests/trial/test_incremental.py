"""IncrementalForward: only what written layers feed is recomputed, and the output is right."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional

from lpsd_search.models.zoo import build_model
from lpsd_search.trial.incremental import IncrementalForward


class Residual(nn.Module):
    """In-place traps: ``out.add_(branch(x))`` (a written branch makes the sum stale while
    ``out`` is kept), an in-place functional ReLU on a view, and a layer used functionally
    (its weight read as an attribute)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.branch = nn.Conv2d(4, 4, 1)
        self.side = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        out = self.conv(x)
        out = out.add_(self.branch(x))
        out = out + functional.conv2d(x, self.side.weight, self.side.bias)
        flat = out.flatten(1)
        return self.head(functional.relu(flat, inplace=True))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.head(y.flatten(1))


def _zoo(spec: str) -> nn.Module:
    return build_model(spec, in_channels=1, num_classes=10, input_size=(28, 28))


def _trained_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them matters."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
    return model.eval()


def _layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("make, shape", [
    (lambda: _zoo("vgg11:width=0.125"), (6, 1, 28, 28)),
    (lambda: _zoo("resnet20:width=0.25"), (6, 1, 28, 28)),
    (Residual, (6, 1, 8, 8)),
    (Branchy, (6, 1, 8, 8)),
])
def test_every_pass_equals_a_whole_forward_of_the_written_model(make, shape):
    torch.manual_seed(0)
    model = _trained_norms(make())
    untouched = copy.deepcopy(model.state_dict())
    reference = copy.deepcopy(model)
    inputs = torch.randn(*shape)
    forward = IncrementalForward(model, inputs)
    whole = IncrementalForward(model, inputs, max_bytes=0)  # keeps nothing: whole passes
    names = _layers(model)
    generator = torch.Generator().manual_seed(2)
    for step in range(8):
        output = forward()
        assert torch.allclose(output, reference(inputs), rtol=1e-4, atol=1e-5)
        assert torch.equal(output, whole())  # the same kernels on the same inputs
        picked = torch.randperm(len(names), generator=generator)[:1 + step % 2].tolist()
        for index in picked:
            name = names[index]
            target = reference.get_submodule(name).weight
            weight = target + 0.3 * torch.randn(target.shape, generator=generator)
            with torch.no_grad():
                target.copy_(weight)
            forward.set_weight(name, weight)
            whole.set_weight(name, weight)
    # the caller's model is never touched
    assert all(torch.equal(value, untouched[key]) for key, value in model.state_dict().items())


def test_a_late_layer_recomputes_only_the_tail():
    torch.manual_seed(0)
    model = _trained_norms(_zoo("vgg11:width=0.125"))
    forward = IncrementalForward(model, torch.randn(4, 1, 28, 28))
    forward()
    total = forward.nodes_run
    forward.set_weight("classifier", torch.randn_like(model.classifier.weight))
    forward()
    assert 0 < forward.nodes_run - total <= 3  # the linear layer and the output
    forward()  # nothing written: nothing recomputed
    assert forward.nodes_run - total <= 3


def test_an_untraceable_model_runs_whole():
    forward = IncrementalForward(Branchy(), torch.randn(2, 1, 8, 8))
    assert forward.graph is None
    assert forward().shape == (2, 3)


def test_an_in_place_sum_never_changes_a_kept_value():
    torch.manual_seed(0)
    model = _trained_norms(Residual())
    inputs = torch.randn(3, 1, 8, 8)
    forward = IncrementalForward(model, inputs)
    forward()
    for _ in range(3):  # only the branch changes: ``out`` is kept, ``out.add_`` is rerun
        weight = torch.randn_like(model.branch.weight)
        with torch.no_grad():
            model.branch.weight.copy_(weight)
        forward.set_weight("branch", weight)
        assert torch.allclose(forward(), model(inputs), rtol=1e-4, atol=1e-5)
