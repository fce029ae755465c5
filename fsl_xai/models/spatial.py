"""Where a foreign network keeps its spatial maps, found by one dry forward pass with hooks.

Grad-CAM, similarity maps and concept probes need a layer whose output is a spatial map
(N, C, h, w). For a network the project did not build, :func:`find_spatial_layers` runs it once on
a small batch with a forward hook on every submodule and reads what each one returns:

- a CNN: the default layer is the last module (in the order modules finish) whose output is a 4-D
  map larger than 1x1 (a global pooling's 1x1 output is not a map);
- 4-D outputs of modules inside a module that returns tokens (N, T, C), after the first tokens, are
  a transformer's attention internals (N, heads, T, d), not maps, and are left out;
- a ViT-style network (token sequences (N, T, C) after its last 4-D map, the patch embedding): the
  last *block* (a numbered entry of a ModuleList/Sequential) that returns tokens whose patch tokens
  reach the output (the caller checks by a gradient). Its patch tokens,
  without the class and register tokens in front, are laid out on the patch grid (h, w) by a
  :class:`TokenMap` module, so that layer methods see a map (N, C, h, w) that the rest of the network
  really uses (:func:`install_token_map`).

Submodules of a TorchScript network run inside compiled code and fire no Python hooks, so a
TorchScript network shows no inner layers here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

#: at most this many tokens in front of the patch tokens (class, distillation and register tokens)
MAX_PREFIX_TOKENS = 16


@dataclass(frozen=True)
class LayerTrace:
    """One module's output in the dry run: its name (relative to the network), output shape, and
    the position at which it finished."""

    name: str
    shape: tuple[int, ...]
    order: int


def trace_outputs(net: nn.Module, example: torch.Tensor) -> tuple[list[LayerTrace], torch.Tensor]:
    """Run ``net`` once on ``example`` (eval mode, no gradients; training flags restored) and record
    the shape of every submodule's tensor output, in the order the modules finish. Returns the
    traces and the network's output."""
    traces: list[LayerTrace] = []
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                traces.append(LayerTrace(name, tuple(output.shape), len(traces)))
        return hook

    flags = [(m, m.training) for m in net.modules()]
    try:
        if not isinstance(net, torch.jit.ScriptModule):
            for name, module in net.named_modules():
                if name and not isinstance(module, torch.jit.ScriptModule):
                    handles.append(module.register_forward_hook(hook_for(name)))
        net.eval()
        with torch.no_grad():
            out = net(example)
    finally:
        for h in handles:
            h.remove()
        for m, was_training in flags:
            m.training = was_training
    return traces, out


@dataclass(frozen=True)
class TokenLayout:
    """Where a ViT-style network's patch tokens are: the block that returns them, how many tokens
    stand in front (class/register tokens), and the patch grid (h, w)."""

    block: str
    prefix: int
    grid: tuple[int, int]


def _patch_grid(n_tokens: int, maps: list[LayerTrace]) -> tuple[int, int] | None:
    for t in reversed(maps):  # the patch embedding's grid, if the network has one
        h, w = t.shape[2], t.shape[3]
        if 0 <= n_tokens - h * w <= MAX_PREFIX_TOKENS and h * w > 1:
            return h, w
    for prefix in range(MAX_PREFIX_TOKENS + 1):
        side = math.isqrt(n_tokens - prefix) if n_tokens > prefix else 0
        if side > 1 and side * side == n_tokens - prefix:
            return side, side
    return None


def _image_maps(traces: list[LayerTrace], batch: int) -> list[LayerTrace]:
    """The 4-D outputs that are maps of the image: not those of a module inside a module that returns
    tokens (N, T, C), once the network works on tokens. Those are a transformer block's attention
    internals, (N, heads, T, head_dim) queries and keys or (N, heads, T, T) weights (timm's ViT
    has nn.Identity q_norm / k_norm there), not (N, C, h, w). A patch embedding's own convolution,
    inside a module that returns the first tokens, is an image map and stays."""
    tokens = [t for t in traces if len(t.shape) == 3 and t.shape[0] == batch]
    if not tokens:
        return [t for t in traces if len(t.shape) == 4 and t.shape[0] == batch]
    first = min(t.order for t in tokens)
    prefixes = tuple(f"{t.name}." for t in tokens)
    return [t for t in traces if len(t.shape) == 4 and t.shape[0] == batch
            and not (t.order > first and t.name.startswith(prefixes))]


def _token_layouts(traces: list[LayerTrace], batch: int) -> list[TokenLayout]:
    maps = _image_maps(traces, batch)
    last_map = max((t.order for t in maps), default=-1)
    tokens = [t for t in traces if len(t.shape) == 3 and t.shape[0] == batch and t.order > last_map]
    blocks = [t for t in tokens if t.name.rsplit(".", 1)[-1].isdigit()] or tokens[-1:]
    layouts = []
    for block in blocks:
        grid = _patch_grid(block.shape[1], maps)
        if grid is not None:
            layouts.append(TokenLayout(block.name, block.shape[1] - grid[0] * grid[1], grid))
    return layouts


def find_spatial_layers(traces: list[LayerTrace], batch: int) -> tuple[list[str], list[TokenLayout]]:
    """Names of the modules with a spatial (N, C, h, w) output larger than 1x1, in the order they
    finish, and for a ViT-style network the token layouts of its blocks, first to last (empty for a
    CNN). The caller picks the last block whose patch tokens reach the output: in a network that
    embeds by its class token, the last block's patch tokens are dropped, and the block before it
    is the one that counts."""
    names: list[str] = []
    for t in _image_maps(traces, batch):
        if t.shape[2] * t.shape[3] > 1 and t.name not in names:
            names.append(t.name)
    return names, _token_layouts(traces, batch)


def last_reaching_block(net: nn.Module, example: torch.Tensor, layouts: list[TokenLayout]) -> TokenLayout | None:
    """The last of ``layouts`` whose patch tokens the output of ``net`` depends on, found by one
    forward and backward pass on ``example`` (eval mode; training flags restored; no parameter
    gradient is stored). A network that embeds by its class token drops the last block's patch
    tokens, so the block before it is the one that counts."""
    if not layouts:
        return None
    outputs: dict[str, torch.Tensor] = {}
    named = dict(net.named_modules())
    handles = [named[lay.block].register_forward_hook(
        lambda m, a, out, name=lay.block: outputs.__setitem__(name, out)) for lay in layouts]
    flags = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        with torch.enable_grad():
            # the input needs a gradient so that a network with frozen weights still builds a graph
            out = net(example.detach().requires_grad_())
            found = [lay for lay in layouts if isinstance(outputs.get(lay.block), torch.Tensor)
                     and outputs[lay.block].requires_grad]
            if not isinstance(out, torch.Tensor) or not found:
                return None
            # a random direction: the plain sum of a normalised output does not move at all
            direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
            grads = torch.autograd.grad((out * direction).sum(), [outputs[lay.block] for lay in found],
                                        allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        for m, was_training in flags:
            m.training = was_training
    for lay, grad in reversed(list(zip(found, grads, strict=True))):
        if grad is not None and bool(grad[:, lay.prefix:].abs().sum() > 0):
            return lay
    return None


class TokenMap(nn.Module):
    """Patch tokens (N, h*w, C) -> the map (N, C, h, w) on the patch grid (a reshape)."""

    def __init__(self, grid: tuple[int, int]):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(n, c, *self.grid)


class TokenMapHook:
    """A forward hook for the block of a :class:`TokenLayout`: its token output is rebuilt from the
    prefix tokens and the map of :class:`TokenMap`, the same values, so that everything after the
    block depends on that map (Grad-CAM's gradients flow through it)."""

    def __init__(self, token_map: TokenMap, prefix: int):
        self.token_map = token_map
        self.prefix = prefix

    def __call__(self, module: nn.Module, args: tuple, output: object) -> object:
        if not isinstance(output, torch.Tensor) or output.ndim != 3:
            return output
        grid = self.token_map(output[:, self.prefix:])
        return torch.cat([output[:, :self.prefix], grid.flatten(2).transpose(1, 2)], dim=1)


def install_token_map(net: nn.Module, layout: TokenLayout) -> tuple[TokenMap, RemovableHandle]:
    """A :class:`TokenMap` for ``layout``, hooked onto its block in ``net``, and the hook's handle."""
    token_map = TokenMap(layout.grid)
    handle = dict(net.named_modules())[layout.block].register_forward_hook(TokenMapHook(token_map, layout.prefix))
    return token_map, handle


__all__ = ["MAX_PREFIX_TOKENS", "LayerTrace", "TokenLayout", "TokenMap", "TokenMapHook", "find_spatial_layers",
           "install_token_map", "last_reaching_block", "trace_outputs"]
