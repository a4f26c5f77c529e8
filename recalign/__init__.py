"""recalign: multimodal sequential recommendation aligned with preference optimisation."""

__version__ = "0.1.0"
