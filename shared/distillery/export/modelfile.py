"""An Ollama `Modelfile` beside an exported GGUF: its chat template (as a Go template) and stop tokens.

Ollama's TEMPLATE is a Go template, not the tokenizer's Jinja one, so the Jinja template is rendered
with sentinel contents and the text around each one becomes the wrapper of that role; a template whose
rendering cannot be split that way is left out, and Ollama falls back to the GGUF's own metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_SLOT = "\x1f{role}\x1f"
ROLES = ("system", "user", "assistant")


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)


def chat_wrappers(tokenizer: Any) -> dict[str, str] | None:
    """The text around each role's content, the generation prompt and the default system turn, or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    slots = {role: _SLOT.format(role=role) for role in ROLES}
    try:
        full = _render(tokenizer, [{"role": r, "content": slots[r]} for r in ROLES], False)
        generation = _render(tokenizer, [{"role": "user", "content": slots["user"]}], True)
        no_generation = _render(tokenizer, [{"role": "user", "content": slots["user"]}], False)
    except Exception:  # a template that insists on other roles or orders: Ollama reads the GGUF's
        return None
    if any(full.count(s) != 1 for s in slots.values()) or not generation.startswith(no_generation):
        return None
    bos = str(getattr(tokenizer, "bos_token", None) or "")
    bos = bos if bos and full.startswith(bos) else ""  # llama.cpp and Ollama add the BOS themselves
    starts: list[str] = []
    rest = full[len(bos) :]
    for role in ROLES:
        before, rest = rest.split(slots[role], 1)
        starts.append(before)
    # Between two slots lies the tail of one role and the head of the next; the rendering ends with the
    # tail of the last role, which closes the others too when the template treats roles alike.
    tail = rest
    parts = {"system_head": starts[0]}
    for role, between in zip(ROLES[1:], starts[1:], strict=True):
        if not between.startswith(tail):
            return None
        parts[f"{role}_head"] = between[len(tail) :]
    for role in ROLES:
        parts[f"{role}_tail"] = tail
    before_user = no_generation[len(bos) : no_generation.index(slots["user"])]
    if not before_user.endswith(parts["user_head"]):
        return None
    parts["default_system"] = before_user[: len(before_user) - len(parts["user_head"])]
    parts["prompt"] = generation[len(no_generation) :]
    return parts


def _go_template(parts: dict[str, str]) -> str:
    """A Go template that renders a conversation as the Jinja template does."""

    def quote(text: str) -> str:
        return text.replace("{{", '{{ "{{" }}')

    default_system = parts["default_system"]
    lines = []
    if default_system:  # what the Jinja template says when the conversation brings no system message
        lines.append(
            '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
            f"{quote(default_system)}{{{{ end }}}}"
        )
    lines.append("{{ range .Messages }}")
    for i, role in enumerate(ROLES):
        keyword = "{{ if" if i == 0 else "{{ else if"
        lines.append(
            f'{keyword} eq .Role "{role}" }}}}{quote(parts[f"{role}_head"])}{{{{ .Content }}}}'
            f"{quote(parts[f'{role}_tail'])}"
        )
    lines.append("{{ end }}")
    lines.append("{{ end }}")
    lines.append(quote(parts["prompt"]))
    return "".join(lines)


def write_modelfile(
    path: Path, gguf_name: str, tokenizer: Any, stop_tokens: list[str], temperature: float | None = None
) -> Path:
    """Write `path` (an Ollama Modelfile) for the GGUF `gguf_name` in the same directory."""
    out = [f"# Ollama: ollama create NAME -f {path.name}", f"FROM ./{gguf_name}"]
    parts = chat_wrappers(tokenizer)
    if parts is not None:
        out.append(f'TEMPLATE """{_go_template(parts)}"""')
    for stop in dict.fromkeys(s for s in stop_tokens if s):
        out.append(f"PARAMETER stop {_quoted(stop)}")
    if temperature is not None:
        out.append(f"PARAMETER temperature {temperature:g}")
    path.write_text("\n".join(out) + "\n")
    return path


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
