"""vistream: a streaming vision pipeline.

One import namespace, four layers; an arrow may only point down (import-linter checks it,
see docs/ARCHITECTURE.md):

* :mod:`vistream.cli` and :mod:`vistream.bench`: the ``vistream`` command and its tools
  (train, eval, bench). Nothing imports them.
* :mod:`vistream.pipeline`: the runtime: wire format, bus, runner, broker, ingest, index
  serving, API.
* :mod:`vistream.stages`: the typed records and the stages' batch logic; no bus, no offsets.
* :mod:`vistream.models`: the methods, one module per paper, and the seeded data generators.

The folders ``pipeline/``, ``stages/`` and ``models/`` sit at the repository root, as the
product's layout has them; the install maps them into this package.
"""

__version__ = "0.1.0"
