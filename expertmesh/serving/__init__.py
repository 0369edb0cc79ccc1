"""Serving: an OpenAI-compatible inference server for a composition.

    settings.py     ServeSettings: every knob, validated where declared
    composition.py  ServedComposition: what the engine needs from a composition (model, tokenizer, planner)
    resident.py     ResidentSet: a bounded set of expert LoRA weights in GPU/CPU memory, LRU-evicted, reloaded
    kvbatch.py      KVBatch: a running batch's left-padded KV cache; prefill, one decode step, merge, select
    sampling.py     per-row temperature / top-p / seed sampling, incremental detokenisation, stop strings
    engine.py       Engine: continuous batching (rows join and leave at every step, each with its own expert
                    mask), live withdrawal, composition swaps, streaming events
    watcher.py      Watcher: polls the registry revision (ETag) and hands withdrawals / new versions to the engine

The HTTP app over it (FastAPI, pydantic, Prometheus) is the top-level package ``serving/``.

Live opt-out, documented bound: a withdrawal in the registry is seen by the watcher within one poll
interval (``poll_interval_s``, default 0.5 s, at most 1 s) plus one HTTP round trip; the engine applies it
before its next forward (one decode step, tens of ms, or one prefill). Rows in flight that could use the
expert have their KV cache recomputed without it, so every token sampled after the switch is computed with
no trace of the expert. Target: under 2 s from the registry's commit to the last use; tests assert it.
"""
