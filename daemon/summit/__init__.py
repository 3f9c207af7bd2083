"""The summit's intake: the inbox watcher (inotify plus rescans) and the registrar (hash, header warning, route)."""
