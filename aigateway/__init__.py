"""
aigateway: an AI gateway on Twisted.
"""

__all__ = ["__version__"]

# The one place the version is written; setup.cfg reads it from here.
__version__ = "0.1.0"
