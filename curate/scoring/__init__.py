"""Image-text relevance scoring: the ``clip_score`` stage and the scorers behind it.

Backends (the stage's ``backend`` setting):

* ``hf_clip`` / ``hf_siglip`` — transformers' CLIPModel / SiglipModel from a local directory;
* ``open_clip`` — open_clip architecture name + local checkpoint (needs torchvision);
* ``label_text_similarity`` — an offline stand-in built from packaged models (EfficientNet-Lite0
  ImageNet labels compared with the caption by all-MiniLM-L6-v2); not CLIP, named for what it is.

Modules import torch/transformers only inside functions, so importing this package is cheap.
"""
