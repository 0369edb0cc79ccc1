"""``expertmesh serve``: the OpenAI-compatible inference server over a composition."""
from __future__ import annotations

import click

from expertmesh.errors import ConfigError


@click.command("serve")
@click.option("--composition", required=True,
              help="Registry composition name (pulled, kept live), or a local composition directory.")
@click.option("--experts", "experts_dir", type=click.Path(), default=None,
              help="Local mode: directory with one package per member (default: <composition>/../experts).")
@click.option("--registry", "registry_url", default=None,
              help="Registry URL (default: EXPERTMESH_REGISTRY_URL or `expertmesh login`). With a local "
                   "directory it is polled for withdrawals only.")
@click.option("--token", "registry_token", default=None, help="Registry token (default: EXPERTMESH_TOKEN / login).")
@click.option("--base", default=None, help="Base model dir or 'smollm2-135m-instruct' (default).")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16"]))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--model-name", default=None, help="Model id in /v1/models (default: the composition's name).")
@click.option("--max-batch", default=8, show_default=True, type=int, help="Rows in one forward.")
@click.option("--max-resident", "max_resident_experts", default=64, show_default=True, type=int,
              help="Expert weights kept in memory; least recently used ones are evicted and reloaded.")
@click.option("--resident-budget-mb", "resident_budget_mb", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Strict memory bound (MB) of the resident expert LoRA pool; a composition whose requests "
                   "may need more experts than fit is refused at start.")
@click.option("--max-context", default=2048, show_default=True, type=int, help="Prompt + completion tokens.")
@click.option("--max-tokens-limit", default=1024, show_default=True, type=int)
@click.option("--poll-interval", "poll_interval_s", default=0.5, show_default=True, type=float,
              help="Registry revision poll in seconds (<= 1; withdrawal applies within ~interval + one step).")
@click.option("--top-k", default=None, type=int, help="Override the composition's top-k.")
@click.option("--threads", default=None, type=int,
              help="Torch threads of the engine (default: torch's). On a shared, busy CPU, 1 is often fastest.")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Where pulled compositions/experts are kept (default: ~/.cache/expertmesh/serving).")
@click.option("--api-key", default=None, envvar="EXPERTMESH_SERVE_API_KEY",
              help="Require 'Authorization: Bearer KEY' on /v1/ (the openai client's api_key); "
                   "/healthz, /readyz and /metrics stay open. Default: EXPERTMESH_SERVE_API_KEY, else no key.")
@click.option("--backend", default="native", show_default=True, type=click.Choice(["native", "vllm"]),
              help="native: this process runs the composed model (token-level gate, MoT). vllm: a routing "
                   "gateway in front of --worker vLLM servers (one expert per request, chosen by the retriever).")
@click.option("--worker", "workers", multiple=True,
              help="vllm backend: a vLLM OpenAI server URL, started with --enable-lora (repeatable).")
@click.option("--max-adapters", default=4, show_default=True, type=int,
              help="vllm backend: expert adapters held per worker (match its --max-loras).")
@click.option("--worker-timeout", "worker_timeout_s", default=60.0, show_default=True, type=float,
              help="vllm backend: seconds to wait for a worker's next chunk before answering 504.")
@click.option("--worker-model", default="base", show_default=True,
              help="vllm backend: the workers' --served-model-name of the base.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(composition, experts_dir, registry_url, registry_token, base, dtype, host, port, model_name, max_batch,
          max_resident_experts, resident_budget_mb, max_context, max_tokens_limit, poll_interval_s, top_k, threads,
          cache_dir, api_key, backend, workers, max_adapters, worker_timeout_s, worker_model, log_level) -> None:
    """Serve a composition: /v1/models, /v1/completions, /v1/chat/completions (streaming), /metrics.

    Requests may add "experts": {"include", "exclude", "tags", "exclude_tags"} and "return_routing": true.
    An owner's withdrawal in the registry applies within ~1 s, without a restart.

    Example: expertmesh serve --composition clinic --registry http://127.0.0.1:8700 --port 8000

    Tiny CPU variant: expertmesh serve --composition runs/tiny/composition --experts runs/tiny/experts
    --base runs/tiny/base   (then: curl 127.0.0.1:8000/v1/models)

    In front of vLLM workers (same API; withdrawal unloads and verifies on every worker):
    expertmesh serve --backend vllm --worker http://127.0.0.1:8200 --composition clinic --registry URL
    """
    import logging

    import uvicorn

    from expertmesh.serving.settings import ServeSettings
    from serving.app import create_app
    from serving.launch import build_server, needs_registry

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log_level != "debug":        # one INFO line per registry poll (every 0.5 s) would drown the log
        logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = ServeSettings.from_env(
        composition=composition, registry_url=registry_url, registry_token=registry_token, base=base, dtype=dtype,
        host=host, port=port, model_name=model_name, max_batch=max_batch,
        max_resident_experts=max_resident_experts, resident_budget_mb=resident_budget_mb, max_context=max_context, max_tokens_limit=max_tokens_limit,
        default_max_tokens=min(128, max_tokens_limit), poll_interval_s=poll_interval_s, top_k=top_k,
        threads=threads, api_key=api_key)
    if workers and backend != "vllm":
        raise ConfigError("--worker needs --backend vllm (the native backend runs the model itself)")
    client = _registry_client(settings) if needs_registry(settings) else None
    if backend == "vllm":
        from serving.gateway.launch import GatewaySettings, build_gateway

        opts = GatewaySettings(workers=list(workers), max_adapters=max_adapters, worker_timeout_s=worker_timeout_s,
                               worker_model=worker_model)
        engine, watcher = build_gateway(settings, opts, experts_dir=experts_dir, cache_dir=cache_dir, client=client)
    else:
        engine, watcher = build_server(settings, experts_dir=experts_dir, cache_dir=cache_dir, client=client)
    comp = engine.comp
    click.echo(f"serving {comp.name} (version {comp.version}, members {comp.members}) on http://{host}:{port}/v1",
               err=True)
    if watcher is None:
        click.echo("note: no registry given, so owner withdrawals are not tracked; /v1/models lists members as "
                   "'unchecked' (pass --registry URL to apply them live)", err=True)
    uvicorn.run(create_app(settings, engine, watcher=watcher), host=host, port=port, log_level=log_level)


def _registry_client(settings):
    from clients.registry_client import RegistryClient

    return RegistryClient.from_config(settings.registry_url, settings.registry_token, timeout=30.0)


def register(group: click.Group) -> None:
    group.add_command(serve)
