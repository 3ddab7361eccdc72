"""Small-object tracking: the aggregation-signature tracker (arXiv 1910.10859), its benchmark
generator and OTB loader, and the evaluation against OpenCV's trackers.

Submodules import OpenCV and NumPy; nothing heavy is imported here.
"""
