"""msam_core: train multimodal models with Modality-Aware SAM and record modality balance.

The flat public API re-exports the pieces in data-flow order (DESIGN.md):
masking -> coalitions -> shapley -> optim -> train -> record.
"""

__version__ = "0.1.0"
