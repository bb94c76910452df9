"""Tokenizer tools: SentencePiece training (:mod:`.train`), vocabulary expansion of
SentencePiece models (:mod:`.expand_sp`) and byte-level BPE tokenizers
(:mod:`.expand_bpe`), token sources (:mod:`.sources`), Hugging Face folders
(:mod:`.hf_folder`) and compression reports (:mod:`.report`).

Heavy libraries (sentencepiece, tokenizers, transformers) are imported inside functions.
"""
