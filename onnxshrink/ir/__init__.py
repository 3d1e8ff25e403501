"""Core IR helpers shared by every layer above them: graphs, constants, shapes, op tables, checks.

``activations`` holds the fused forms of activations that passes rewrite to and from.

Nothing here imports a pass, the pipeline or the CLI.
"""
