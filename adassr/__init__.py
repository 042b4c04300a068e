"""adassr: camera-adaptive real-world super-resolution."""

__version__ = "0.1.0"
