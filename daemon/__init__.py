"""The asyncio runtime of one skyrelay site, in rooms (see daemon/README.md for the rooms and one file's path)."""
