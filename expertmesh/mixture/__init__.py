"""The gated mixture of LoRA experts over one frozen base (FlexOlmo-style, adapters instead of FFN experts)."""
