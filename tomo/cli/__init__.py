"""The ``tomo`` command line."""
