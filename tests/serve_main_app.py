"""An application that serves through `serve_main`, as README's Python API example does:
`python serve_main_app.py [configured]`; with `configured` it sets up logging itself first.
Its agent fails when asked to (`fail`) and answers otherwise."""

import asyncio
import logging
import sys

from agent_runtime import RuntimeServer, serve_main


async def moody(input: str) -> str:
    if input == "fail":
        raise ValueError("asked to fail")
    return f"fine: {input}"


async def main() -> int:
    if sys.argv[1:] == ["configured"]:
        logging.basicConfig(level=logging.WARNING, format="APP %(levelname)s %(message)s")
    return await serve_main(RuntimeServer(moody))


sys.exit(asyncio.run(main()))
