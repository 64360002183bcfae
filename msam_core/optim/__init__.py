"""Optimizers: the SAM family as ``torch.optim`` wrappers (:class:`MSAM`, :class:`SAM`)."""

from msam_core.optim.sam import MSAM, SAM

__all__ = ["MSAM", "SAM"]
