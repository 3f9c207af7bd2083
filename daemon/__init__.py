"""The asyncio runtime of one skyrelay site: journal, watcher, transfers, routes, ingest."""
