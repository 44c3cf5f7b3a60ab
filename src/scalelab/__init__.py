"""scalelab: nine systems from System Design Interview vol. 2, as real servers."""

__version__ = "0.1.0"
__all__ = ["__version__"]
