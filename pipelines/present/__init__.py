"""Presentation: the `mmcurate` CLI, report.html and its SVG plots."""
