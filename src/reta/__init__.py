"""reta: decoupled dataset distillation (squeeze -> recover -> relabel -> evaluate) with RETA."""

__version__ = "0.1.0"
