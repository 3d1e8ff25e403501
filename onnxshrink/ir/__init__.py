"""Core IR helpers shared by every layer above them: graphs, constants, shapes, op tables, checks.

Nothing here imports a pass, the pipeline or the CLI.
"""
