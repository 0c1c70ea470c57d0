"""fungilib: from a GBIF occurrence export of fungi to an offline species classifier."""

__version__ = "0.1.0"
