"""Hierarchical models beyond posteriordb, written in Pyro as users write them, with NUTS references.

See ``README.md`` for the models, what each stresses and how their references were made.
"""
