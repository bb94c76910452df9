"""Model loading and surgery: GGUF import (:mod:`.gguf`), embedding resize (:mod:`.resize`).

Heavy libraries (torch, transformers) are imported inside functions.
"""
