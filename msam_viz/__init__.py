"""msam_viz: read msam run directories and draw modality-balance, sharpness and landscape figures."""

__version__ = "0.1.0"
