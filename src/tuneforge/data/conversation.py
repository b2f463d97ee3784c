"""The canonical conversation: what every input format becomes, and what tokenization consumes.

It mirrors OpenAI's chat fine-tuning format because that is the format most users already have,
and because `to_openai()` must round-trip without losing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Message:
    role: Role
    content: str | None
    # OpenAI's per-message `weight`: 0 = keep in the prompt but do not train on this assistant turn.
    # None means "not given", which trains like 1.
    weight: int | None = None
    # OpenAI-shaped tool calls: [{"id", "type": "function", "function": {"name", "arguments": str}}]
    tool_calls: tuple[dict[str, Any], ...] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def trained(self) -> bool:
        """Whether this message carries loss: assistant turns not switched off by weight 0."""
        return self.role == "assistant" and self.weight != 0

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls is not None:
            out["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.weight is not None:
            out["weight"] = self.weight
        return out


@dataclass(frozen=True)
class Conversation:
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] | None = None
    # For preference data (OpenAI DPO): `messages` ends with the preferred answer and `rejected`
    # holds the non-preferred one. Parsed now; trained on by a later DPO recipe.
    rejected: tuple[Message, ...] | None = None

    @property
    def has_system(self) -> bool:
        return any(m.role == "system" for m in self.messages)

    @property
    def has_user(self) -> bool:
        return any(m.role == "user" for m in self.messages)

    def to_openai(self) -> dict[str, Any]:
        """OpenAI chat fine-tuning JSON (for DPO rows: the preferred conversation)."""
        out: dict[str, Any] = {"messages": [m.to_openai() for m in self.messages]}
        if self.tools is not None:
            out["tools"] = [dict(t) for t in self.tools]
        return out

    def to_openai_dpo(self) -> dict[str, Any]:
        """OpenAI preference fine-tuning JSON; needs `rejected`."""
        if self.rejected is None:
            raise ValueError("this conversation has no non-preferred output")
        split = len(self.messages) - 1
        inp: dict[str, Any] = {"messages": [m.to_openai() for m in self.messages[:split]]}
        if self.tools is not None:
            inp["tools"] = [dict(t) for t in self.tools]
        return {
            "input": inp,
            "preferred_output": [self.messages[split].to_openai()],
            "non_preferred_output": [m.to_openai() for m in self.rejected],
        }
