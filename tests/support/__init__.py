"""What tests share: fakes, loopback servers, builders and waits. Test modules import from here,
never from each other.

- ``env``: the repository root, ``child_env`` for subprocesses, ``require`` for test-only packages
- ``waiting``: ``wait_until``, the one polling loop (every wait has a deadline)
- ``engines``: ``FakeEngine`` (in-process) and ``ScriptedEngineFactory`` (engine process)
- ``tasks``: ``FakeClock``, ``make_image``, ``make_job``
- ``images``: PNG/JPEG bytes, data URIs, deterministic pictures
- ``http``: ``serve`` (a loopback http.server), ``Receiver`` (webhooks), ``image_host``
- ``hub``: a loopback Hugging Face Hub mirror and stand-in GGUF bytes
- ``api``: a live uvicorn server of the real app, and its request helpers
- ``clients``: Runware's official clients, run in subprocesses
"""
