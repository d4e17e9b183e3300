"""The ``qgraph`` command line."""
