"""holstein-dist: PARC surrogates of the 1D semi-classical Holstein chain, at cluster scale."""

__version__ = "0.2.0"
