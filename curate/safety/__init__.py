"""Safety filtering: openPangu-VL removes unsafe/NSFW images "via an automatic classifier combined with
heuristic rules". ``classifier`` wraps NudeNet's shipped ONNX detector, ``rules`` the keyword lists,
``stage`` the ``nsfw_filter`` pipeline stage.
"""
