"""``decode_complete``: a continuation cut inside a multi-byte character ends cleanly."""

from __future__ import annotations

from cptcore.train.export_cli import REPLACEMENT_CHAR, decode_complete

TEXT = "中华人民共和国刑法规定"


def test_cut_multibyte_character_is_dropped(smollm2_tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    ids = tok(TEXT)["input_ids"]
    cuts = [k for k in range(1, len(ids)) if tok.decode(ids[:k], skip_special_tokens=True).endswith(REPLACEMENT_CHAR)]
    assert cuts, "expected some prefix of the Chinese text to end inside a character"
    for k in cuts:
        out = decode_complete(tok, ids[:k])
        assert not out.endswith(REPLACEMENT_CHAR), (k, out)
        assert TEXT.startswith(out) and out, (k, out)
    assert decode_complete(tok, ids) == TEXT  # complete text is untouched



def test_replacement_character_inside_text_is_kept(smollm2_tokenizer_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_tokenizer_dir))
    text = "abc" + REPLACEMENT_CHAR + "def"
    assert decode_complete(tok, tok(text)["input_ids"]) == text
