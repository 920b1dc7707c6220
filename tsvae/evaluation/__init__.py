"""Evaluation: FID, the proxy classifier distance and the paper diagnostics."""
