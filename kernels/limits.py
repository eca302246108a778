"""Argument bounds of the kernels that callers check up front, in a module that imports nothing (no torch), so
configuration validation can reject a bad value before anything heavy is imported."""

from __future__ import annotations

__all__ = ["TAU_RANGE"]

TAU_RANGE = (1e-3, 10.0)  # contrastive temperature: below, exp overflows in fp32; above, the loss is flat
