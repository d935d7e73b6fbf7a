"""Running captions as durable work: ``tasks`` (the SQLite store), ``service`` (the facade the
server calls), ``worker`` (the engine in a child process) and ``delivery`` (webhooks, uploads)."""
