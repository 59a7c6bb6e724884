"""Triton kernels, each with a plain torch reference beside it. Importing this package
imports Triton; ``muonlib.linalg`` does so only when a kernel is dispatched."""

from .symmetric import gram, gram_reference, interpreting

__all__ = ["gram", "gram_reference", "interpreting"]
