"""Built-in chat templates: ``llama2``, ``llama3``, ``chatml``, ``colossal``, ``tokenizer``.

Each ``render(messages, *, tokenizer, options)`` returns segments whose texts concatenate
to the whole conversation; ``train=True`` marks the assistant's content and its
end-of-turn token. Special tokens are written as text (the fast tokenizer parses them
back into single ids); each spec declares the literal special tokens it writes
(``ChatTemplate.special_tokens``), checked against the tokenizer by
:func:`cptcore.data.sft.check_template_tokens` before any conversation is encoded.
``tokenizer`` may be ``None`` (``cpt templates --show``): then the usual token strings
are used and no vocabulary check is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..specs import ChatTemplate, Segment

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
LLAMA3_TOKENS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

COLOSSAL_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.\n\n"
)
LLAMA2_SYSTEM = ""


@dataclass(frozen=True)
class TemplateOptions:
    system: str = ""  # system prompt used when a conversation has none ("" = no system turn)


@dataclass(frozen=True)
class ColossalOptions:
    system: str = COLOSSAL_SYSTEM  # the seed's default system prompt


def _bos_eos(tokenizer: Any) -> tuple[str, str]:
    if tokenizer is None:
        return "<s>", "</s>"
    return tokenizer.bos_token or "", tokenizer.eos_token or ""


def _system(messages: Sequence[dict], options: Any) -> tuple[str, list[dict]]:
    msgs = list(messages)
    if msgs and msgs[0]["role"] == "system":
        return msgs[0]["content"], msgs[1:]
    return getattr(options, "system", "") if options is not None else "", msgs


def render_chatml(messages, *, tokenizer=None, options=None) -> list[Segment]:
    system, msgs = _system(messages, options)
    segs = [Segment(f"<|im_start|>system\n{system}<|im_end|>\n")] if system else []
    for m in msgs:
        if m["role"] == "assistant":
            segs.append(Segment("<|im_start|>assistant\n"))
            segs.append(Segment(m["content"] + "<|im_end|>", train=True))
            segs.append(Segment("\n"))
        else:
            segs.append(Segment(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"))
    return segs


def render_llama3(messages, *, tokenizer=None, options=None) -> list[Segment]:
    system, msgs = _system(messages, options)
    segs = [Segment("<|begin_of_text|>")]
    if system:
        segs.append(Segment(f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"))
    for m in msgs:
        head = f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
        if m["role"] == "assistant":
            segs.append(Segment(head))
            segs.append(Segment(m["content"] + "<|eot_id|>", train=True))
        else:
            segs.append(Segment(head + m["content"] + "<|eot_id|>"))
    return segs


def render_llama2(messages, *, tokenizer=None, options=None) -> list[Segment]:
    """Meta's LLaMA-2 chat format: ``<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user}
    [/INST] {answer} </s>`` per exchange (llama/generation.py, ``chat_completion``)."""
    bos, eos = _bos_eos(tokenizer)
    system, msgs = _system(messages, options)
    segs: list[Segment] = []
    pending_user: str | None = None
    for m in msgs:
        if m["role"] == "user":
            text = m["content"]
            if system and not segs and pending_user is None:
                text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
            pending_user = (pending_user + "\n" + text) if pending_user else text
        elif m["role"] == "assistant":
            segs.append(Segment(f"{bos}[INST] {(pending_user or '').strip()} [/INST] "))
            segs.append(Segment(f"{m['content'].strip()} {eos}", train=True))
            pending_user = None
    if pending_user is not None:
        segs.append(Segment(f"{bos}[INST] {pending_user.strip()} [/INST]"))
    return segs


def render_colossal(messages, *, tokenizer=None, options=None) -> list[Segment]:
    """The seed's (Colossal-LLaMA) format: ``{system}Human: <s>{user}</s>Assistant:
    <s>{answer}</s>`` after a leading BOS (colossal_llama/dataset/conversation.py)."""
    bos, eos = _bos_eos(tokenizer)
    system, msgs = _system(messages, options if options is not None else ColossalOptions())
    if system and not system.endswith("\n"):
        system += "\n\n"  # the seed's default prompt ends with a blank line; keep that shape
    segs = [Segment(f"{bos}{system}")]
    for m in msgs:
        if m["role"] == "assistant":
            segs.append(Segment(f"Assistant: {bos}"))
            segs.append(Segment(f"{m['content']}{eos}", train=True))
        else:
            segs.append(Segment(f"Human: {bos}{m['content']}{eos}"))
    return segs


def render_tokenizer(messages, *, tokenizer=None, options=None) -> list[Segment]:
    """Render with the tokenizer's own Jinja ``chat_template``. Assistant spans are found
    by rendering each prefix: the text between ``messages[:i]`` with the generation
    prompt and ``messages[:i+1]`` is the assistant turn (trailing whitespace after the
    end-of-turn token is not trained).

    Raises:
        ConfigError: no tokenizer / no chat_template, or a template whose renderings of
            successive prefixes are not prefixes of each other.
    """
    if tokenizer is None:
        raise ConfigError("chat template 'tokenizer' needs a tokenizer: pass --tokenizer DIR")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"chat template 'tokenizer': {getattr(tokenizer, 'name_or_path', 'the tokenizer')} has no chat_template; pick another --template")
    msgs = list(messages)
    if options is not None and getattr(options, "system", "") and (not msgs or msgs[0]["role"] != "system"):
        msgs = [{"role": "system", "content": options.system}, *msgs]

    def render(upto: int, gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs[:upto], tokenize=False, add_generation_prompt=gen)

    full = render(len(msgs), False)
    segs: list[Segment] = []
    done = 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt = render(i, True)
        start = len(prompt)
        end_text = render(i + 1, False)
        if not full.startswith(prompt) or not full.startswith(end_text) or start < done:
            raise ConfigError("the tokenizer's chat_template is not prefix-stable; pick another --template")
        turn = end_text[start:]
        trained = turn.rstrip()
        segs.append(Segment(full[done:start]))
        segs.append(Segment(trained, train=True))
        done = start + len(trained)
    segs.append(Segment(full[done:]))
    return [s for s in segs if s.text]


@hookimpl
def cpt_register_chat_templates():
    return [
        ChatTemplate("chatml", render_chatml, "<|im_start|>role ... <|im_end|> (SmolLM2, Qwen)", TemplateOptions,
                     special_tokens=CHATML_TOKENS),
        ChatTemplate("llama3", render_llama3, "LLaMA-3 header/eot format", TemplateOptions, special_tokens=LLAMA3_TOKENS),
        ChatTemplate("llama2", render_llama2, "LLaMA-2 [INST] ... [/INST] format (also Mistral)", TemplateOptions),
        ChatTemplate("colossal", render_colossal, "the seed's Human:/Assistant: format (Colossal-LLaMA)", ColossalOptions),
        ChatTemplate("tokenizer", render_tokenizer, "the tokenizer's own Jinja chat_template", TemplateOptions),
    ]
