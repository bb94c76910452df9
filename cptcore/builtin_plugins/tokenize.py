"""The default ``cpt_tokenize_fn``: the tokenizer folder's fast tokenizer, batched."""

from __future__ import annotations

import functools

from ..data.tokenize import encode_texts
from ..hookspecs import hookimpl


@hookimpl(trylast=True)
def cpt_tokenize_fn(tokenizer_path, add_bos, add_eos):
    return functools.partial(encode_texts, str(tokenizer_path), add_bos, add_eos)
