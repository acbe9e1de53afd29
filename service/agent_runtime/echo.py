"""The embedded default agent: answers at once with no model or API key.

It returns its input as it came (text, structured or bytes); streamed, it sends
text word by word; given `{"tool": "reverse", "arguments": {"text": ...}}` it
calls its demo tool, so tool events can be seen end to end.
"""

from __future__ import annotations

import re
from typing import Any

from .context import current_run, stream_chunk
from .errors import InvalidInput
from .tools import tool

_WORDS = re.compile(r"\S+\s*|\s+")


@tool
def reverse(text: str) -> str:
    """Reverse a text.

    Args:
        text: the text to reverse
    """
    return text[::-1]


class EchoAgent:
    """Echoes its input; streams text word by word; runs its `reverse` tool on request."""

    name = "echo"
    model = ""
    streaming = True
    tools = (reverse,)

    async def run(self, input: Any) -> Any:
        if isinstance(input, dict) and "tool" in input:
            return await self._call_tool(input)
        run = current_run()
        if run is not None and run.streaming and isinstance(input, str):
            for piece in _WORDS.finditer(input):  # one word at a time, not a list of them all
                await stream_chunk(piece.group())  # held back while the caller lags behind
        return input

    async def _call_tool(self, request: dict[str, Any]) -> Any:
        by_name = {t.name: t for t in self.tools}
        chosen = by_name.get(request["tool"])
        if chosen is None:
            raise InvalidInput(f"echo has no tool {request['tool']!r}; it has: {', '.join(by_name)}")
        try:
            return await chosen.invoke(request.get("arguments") or {}, call_id="call-1")
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None


echo_agent = EchoAgent()
