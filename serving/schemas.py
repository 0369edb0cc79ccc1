"""Request bodies of the OpenAI-compatible API, plus expertmesh's extra fields.

Unknown fields are refused (a misspelt opt-out such as ``exlude_experts`` must not be silently ignored).
Extra fields, accepted on both endpoints (with the openai client: ``extra_body={...}``):

    experts: {include: [...], exclude: [...], tags: [...], exclude_tags: [...]}
    include_experts: [...], exclude_experts: [...]       (top-level shorthands; merged with ``experts``)
    return_routing: true | "tokens"                       (response carries ``routing``; "tokens": per token)
    ignore_eos: true                                      (generate max_tokens tokens; benchmarks)
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from expertmesh.serving.composition import Selection
from expertmesh.serving.errors import UnsupportedParameterError


class ExpertSelection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include: Optional[list[str]] = Field(None, description="only these experts ([] = public base only)")
    exclude: Optional[list[str]] = Field(None, description="never these experts")
    tags: Optional[list[str]] = Field(None, description="only experts with at least one of these domain tags")
    exclude_tags: Optional[list[str]] = Field(None, description="never experts with any of these tags")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(None, ge=0)
    user: Optional[str] = None
    metadata: Optional[dict[str, str]] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict[str, float]] = None
    logprobs: Optional[Union[bool, int]] = None
    # expertmesh extras
    experts: Optional[ExpertSelection] = None
    include_experts: Optional[list[str]] = None
    exclude_experts: Optional[list[str]] = None
    return_routing: Union[bool, Literal["tokens"]] = False
    ignore_eos: bool = False

    def check_supported(self) -> None:
        bad: list[tuple[str, str]] = []
        if self.n != 1:
            bad.append(("n", f"n={self.n}: only n=1 is supported; send several requests (they are batched)"))
        if self.presence_penalty or self.frequency_penalty:
            bad.append(("presence_penalty", "presence/frequency penalties are not supported; leave them at 0"))
        if self.logit_bias:
            bad.append(("logit_bias", "logit_bias is not supported"))
        if self.logprobs:
            bad.append(("logprobs", "logprobs are not supported"))
        if bad:
            field, msg = bad[0]
            raise UnsupportedParameterError(msg, detail={"field": field})

    def selection(self) -> Selection:
        sel = self.experts or ExpertSelection()
        include = _union(sel.include, self.include_experts)
        return Selection(include=include, exclude=sorted(set(sel.exclude or []) | set(self.exclude_experts or [])),
                         tags=sel.tags, exclude_tags=list(sel.exclude_tags or []))

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _union(a: Optional[list[str]], b: Optional[list[str]]) -> Optional[list[str]]:
    if a is None and b is None:
        return None
    return sorted(set(a or []) | set(b or []))


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise UnsupportedParameterError("echo is not supported", detail={"field": "echo"})
        if self.best_of not in (None, 1):
            raise UnsupportedParameterError("best_of is not supported", detail={"field": "best_of"})
        if self.suffix:
            raise UnsupportedParameterError("suffix is not supported", detail={"field": "suffix"})

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None

    def as_template_dict(self) -> dict[str, Any]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in (self.content or []))
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)

    def effective_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
