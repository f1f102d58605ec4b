"""Inference methods as values: update rules, Pathfinder, batch-and-match.

Importing this package imports nothing heavy; the method modules are loaded on use
(``from svi_torch.methods.pathfinder import pathfinder``).
"""
