"""softarm: fine-tune openpi's PyTorch pi0 / pi0.5 for soft continuum arms whose proprioception is a graph."""

__version__ = "0.1.0"
