"""MERT: self-supervised music audio encoder."""

__version__ = "0.1.0"
