"""StylEx workbench: explain image classifiers through StyleSpace attributes."""

__version__ = "0.1.0"
