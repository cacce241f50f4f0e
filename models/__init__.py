"""Reference models: definitions (reference.py), trained weights, and how they were trained (README.md)."""
