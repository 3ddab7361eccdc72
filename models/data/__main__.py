"""``python -m vistream.models.data``: write a seeded sample video, its ground truth and
optionally its frames (see :func:`vistream.models.data.video.main`)."""

from vistream.models.data.video import main

raise SystemExit(main())
