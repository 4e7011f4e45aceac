"""In-place slicing of ``nn.Linear`` layers: the physical half of pruning.

The Linear objects are kept (only their parameters are replaced) so hooks and parent references stay
valid. A zero-width attention keeps ONE all-zero unit per head as a placeholder: the stock forward
(views by head size, caches, T5 position bias) then still runs, and the sublayer contributes exactly
nothing but its output bias. Such layers are marked so that widths and parameter counts report 0.
"""

from __future__ import annotations

import torch
from torch import nn

_ZERO_MARK = "taskprune_zero_width"


def is_zero_width(linear: nn.Linear) -> bool:
    """True if ``linear`` is a zero-width placeholder left by pruning a whole attention."""
    return bool(getattr(linear, _ZERO_MARK, False))


def slice_rows(linear: nn.Linear, keep: torch.Tensor, zero: bool = False) -> None:
    """Keep output units ``keep`` (weight rows and bias entries); ``zero`` makes them a placeholder."""
    weight = linear.weight.data.index_select(0, keep.to(linear.weight.device))  # a new tensor already
    bias = None if linear.bias is None else linear.bias.data.index_select(0, keep.to(linear.weight.device))
    if zero:
        weight.zero_()
        if bias is not None:
            bias.zero_()
    linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    linear.out_features = int(keep.numel())
    setattr(linear, _ZERO_MARK, zero)


def slice_cols(linear: nn.Linear, keep: torch.Tensor, zero: bool = False) -> None:
    """Keep input units ``keep`` (weight columns); the bias is the output's and stays whole."""
    weight = linear.weight.data.index_select(1, keep.to(linear.weight.device))
    if zero:
        weight.zero_()
    linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
    linear.in_features = int(keep.numel())
