"""The evaluation protocol as library code (docs/evaluation.md): simulation and scores."""
