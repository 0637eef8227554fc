"""The small core under everything: settings, database engine and sessions, logging
set-up, file locks. It imports nothing of sentiloop's own packages."""
