"""A third-party cptcore plugin: the Zephyr chat template, added through the
``cptcore`` entry-point group (see this folder's pyproject.toml)."""

from cptcore import ChatTemplate, Segment, hookimpl


def render_zephyr(messages, *, tokenizer=None, options=None):
    """<|system|>\\n...</s>\\n<|user|>\\n...</s>\\n<|assistant|>\\n...</s>\\n; loss on the
    assistant's content and its closing ``</s>``."""
    segments = []
    for message in messages:
        segments.append(Segment(f"<|{message['role']}|>\n"))
        is_reply = message["role"] == "assistant"
        segments.append(Segment(message["content"] + "</s>", train=is_reply))
        segments.append(Segment("\n"))
    return segments


@hookimpl
def cpt_register_chat_templates():
    # "</s>" is written as text: declare it, so that cptcore refuses a tokenizer that
    # lacks it (it would be split into ordinary pieces and trained as the end of turn).
    # <|user|> etc. are plain text in Zephyr's own tokenizer, so they are not listed.
    return [
        ChatTemplate(
            name="zephyr", render=render_zephyr, description="Zephyr (HuggingFaceH4) turns", special_tokens=("</s>",)
        )
    ]
