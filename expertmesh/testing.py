"""Tiny offline models for tests and CPU smoke runs: a config-built Llama plus a small BPE tokenizer.

    from expertmesh.testing import make_tiny_base
    path = make_tiny_base(tmp_path / "base")           # ~0.2 s, a 2-layer hidden-32 model
"""
from __future__ import annotations

from pathlib import Path

_TOKENIZER_TEXT = (
    "the patient was given aspirin for chest pain and fever. "
    "the licensee shall not sublicense the software without written permission. "
    "def main(argv): return sum(x * 2 for x in argv if x) "
    "to be or not to be that is the question whether tis nobler in the mind. "
    "the kernel scheduler assigns a process to a cpu core and the daemon logs to syslog. "
    "0123456789 ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz ()[]{}:;,.!?'\"-_=+*/\\\n"
)


def make_tiny_base(out: str | Path, *, hidden_size: int = 32, num_layers: int = 2, vocab_size: int = 384,
                   seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([_TOKENIZER_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.save_pretrained(str(out))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    return out


TINY_TEXTS = {
    "medicine": ["the patient was given aspirin for chest pain and fever.",
                 "fever and chest pain in the patient were treated with aspirin."],
    "law": ["the licensee shall not sublicense the software without written permission.",
            "without written permission the licensee shall not sublicense the software."],
    "code": ["def main(argv): return sum(x * 2 for x in argv if x)",
             "def f(x): return [y * 2 for y in x if y]"],
}
