"""The gradient noise's one-pass draw gives the bits of ``randn`` then ``mul_(std)``."""

from __future__ import annotations

import pytest
import torch

from pulseopt_torch._noise import scaled_normal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1,), (15,), (16,), (17,), (33,), (257, 129), (4, 8, 16)])
@pytest.mark.parametrize("std", [0.005, 0.1, 3.0])
def test_scaled_normal_matches_randn_then_scale(
    dtype: torch.dtype, shape: tuple[int, ...], std: float
) -> None:
    fused, stepwise = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    like = torch.zeros(shape, dtype=dtype)
    for _ in range(2):  # the generators also stay in step
        got = scaled_normal(like, std, fused)
        want = torch.randn(shape, generator=stepwise, dtype=dtype).mul_(std)
        assert got.dtype == dtype and got.shape == like.shape
        assert torch.equal(got, want)
