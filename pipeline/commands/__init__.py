"""CLI command modules, one per feature area; :mod:`pipeline.cli` imports them all.

A module here does ``from pipeline.cli import app, train_app, bench_app, eval_app`` and decorates its
commands. Keep imports of heavy libraries inside the command functions: ``vistream --help``
should stay instant.
"""
