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
    return [ChatTemplate(name="zephyr", render=render_zephyr, description="Zephyr (HuggingFaceH4) turns")]
