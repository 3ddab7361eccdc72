"""Small-object tracking: the aggregation-signature tracker (arXiv 1910.10859) and its
evaluation against OpenCV's trackers. The benchmark's sequences (generated, or read from OTB
folders) come from :mod:`vistream.models.data`.

Submodules import OpenCV and NumPy; nothing heavy is imported here.
"""
