"""Model size and cost.

FLOPs follow torch.utils.flop_counter.FlopCounterMode: a multiply-add counts as 2 FLOPs (a
Linear(in, out) costs 2*in*out per sample), and only matmul / convolution / attention kernels are
counted (BatchNorm, activations and pooling are memory-bound and left out). Papers that quote
"FLOPs" for ResNets usually mean multiply-adds: resnet20 at 32 px is 40.8M MACs = 81.6M FLOPs here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> int:
    """Forward FLOPs (2 per multiply-add) for one image of `channels` x H x W, measured in eval
    mode without grad on the model's own device and dtype; the model is left as it was."""
    height, width = input_size
    reference = next(model.parameters(), None)
    if reference is None:
        reference = next(model.buffers(), torch.empty(0))
    dtype = reference.dtype if reference.is_floating_point() else torch.float32
    x = torch.zeros(1, channels, height, width, device=reference.device, dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, training in modes.items():
            m.training = training
    return int(counter.get_total_flops())
