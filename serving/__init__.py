"""The HTTP app of serving: the OpenAI-compatible web layer over the core engine (expertmesh.serving).

    app.py              create_app(settings, engine): /v1/models, /v1/completions, /v1/chat/completions, health,
                        metrics; the one place that maps library errors to HTTP statuses for serving
    schemas.py          pydantic request bodies (OpenAI fields + "experts" + "return_routing")
    openai_format.py    completion / chat response bodies and SSE streaming from engine events
    metrics.py          Prometheus metrics of the engine
    launch.py           build_server(settings, client=...): base, composition, engine, watcher
    registry_source.py  the watcher's registry sources and the pull of a composition's members

Run it: ``expertmesh serve --composition NAME|DIR`` (see cli/serve.py).
"""
