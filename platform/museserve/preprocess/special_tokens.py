"""The control tokens of the Muse tokenizer.

They occupy ids 0..len(CONTROL_TOKENS)-1 in the order of `CONTROL_TOKENS`. The order is part
of the model's contract: append new tokens by renaming a reserved one, never by reordering.
"""

from __future__ import annotations

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|eos|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
TOOL = "<|tool|>"
END = "<|end|>"  # closes one turn
THINK = "<|think|>"  # opens the reasoning segment
THINK_END = "<|/think|>"  # closes the reasoning segment
TOOL_CALL = "<|tool_call|>"
TOOL_CALL_END = "<|/tool_call|>"
TOOLS = "<|tools|>"  # opens the list of tools offered to the model
IMAGE = "<|image|>"
AUDIO = "<|audio|>"

NUM_RESERVED = 17
RESERVED: tuple[str, ...] = tuple(f"<|reserved_{i}|>" for i in range(NUM_RESERVED))

CONTROL_TOKENS: tuple[str, ...] = (
    PAD,
    BOS,
    EOS,
    SYSTEM,
    USER,
    ASSISTANT,
    TOOL,
    END,
    THINK,
    THINK_END,
    TOOL_CALL,
    TOOL_CALL_END,
    TOOLS,
    IMAGE,
    AUDIO,
    *RESERVED,
)

NUM_CONTROL_TOKENS = len(CONTROL_TOKENS)
