"""An agent module that prints when imported (for the plugin handshake test)."""

print("hello from an agent module being imported")


async def agent(input):
    print("printing while running")
    return input
