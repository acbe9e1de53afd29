# Seed 004 (SessionManager / Session / Runner), verbatim but for its import line.
# `my_config` and `my_builder` come from the seed's previous chapter: here, a config
# naming the embedded echo agent and the runtime's AgentBuilder.
import asyncio

from agent_runtime import AgentBuilder
from agent_runtime import SessionManager

my_config = {"agents": ["agent_runtime.echo:echo_agent"]}
my_builder = AgentBuilder()


async def main():
    # We use the builder and config from Chapter 2
    manager = SessionManager(
        config=my_config,
        shared_builder=my_builder,
        max_concurrency=10  # Only allow 10 agents to run at once
    )

    # Create a session for a specific user
    async with manager.session(user_id="user_123") as session:

        # Inside this block, we are in a safe, isolated bubble
        # Specifically for "user_123"
        print(f"Session ready for: {session.user_id}")

        # Prepare the input
        user_input = "Hello, help me fix my router."

        # Launch the runner
        async with session.run(user_input) as runner:

            # Wait for the result
            result = await runner.result()
            print(f"Agent Replied: {result}")

        # Streaming example usage
        async with session.run(user_input) as runner:
            async for chunk in runner.result_stream():
                print(chunk, end="", flush=True)
        print()

asyncio.run(main())
