"""Torch code: the classifier (``model``), the frozen-encoder feature pass (``features``) and its store
(``feature_cache``), the public corpus and warm start (``public``), the loss (``loss``), devices and autocast
(``device``), LoRA's frozen-prefix cache (``prefix_cache``), and the head's input rows (``inputs``, torch-free).

Nothing is imported here, so that ``dprad.nn.inputs`` stays free of torch.
"""
