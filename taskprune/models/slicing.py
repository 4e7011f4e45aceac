"""In-place slicing of ``nn.Linear`` layers: the physical half of pruning.

The Linear objects are kept (only their parameters are replaced) so hooks and parent references stay
valid. A zero-width attention keeps ONE all-zero unit per head as a placeholder: the stock forward
(views by head size, caches, T5 position bias) then still runs, and the sublayer contributes exactly
nothing but its output bias. Such layers are marked so that widths and parameter counts report 0.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.placement import set_weight, weight_value

_ZERO_MARK = "taskprune_zero_width"


def is_zero_width(linear: nn.Linear) -> bool:
    """True if ``linear`` is a zero-width placeholder left by pruning a whole attention."""
    return bool(getattr(linear, _ZERO_MARK, False))


def _sliced(linear: nn.Linear, name: str, dim: int, keep: torch.Tensor, zero: bool) -> None:
    """``linear.<name>`` cut to ``keep`` along ``dim`` (a new tensor), resident or offloaded by a device map."""
    value = weight_value(linear, name)
    cut = value.index_select(dim, keep.to(value.device))  # a new tensor already
    if zero:
        cut.zero_()
    set_weight(linear, name, cut)


def slice_rows(linear: nn.Linear, keep: torch.Tensor, zero: bool = False) -> None:
    """Keep output units ``keep`` (weight rows and bias entries); ``zero`` makes them a placeholder."""
    _sliced(linear, "weight", 0, keep, zero)
    if linear.bias is not None:
        _sliced(linear, "bias", 0, keep, zero)
    linear.out_features = int(keep.numel())
    setattr(linear, _ZERO_MARK, zero)


def slice_cols(linear: nn.Linear, keep: torch.Tensor, zero: bool = False) -> None:
    """Keep input units ``keep`` (weight columns); the bias is the output's and stays whole."""
    _sliced(linear, "weight", 1, keep, zero)
    linear.in_features = int(keep.numel())
