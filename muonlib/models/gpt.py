"""The decoder-only transformer: blocks, the model, generation, parameter counts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention, MultiHeadLatentAttention
from .config import ModelConfig
from .decode import Decoder
from .moe import MLP, MoE


class Block(nn.Module):
    """Pre-norm residual block: attention, then the FFN (dense or MoE)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        out_std = 0.02 / math.sqrt(2 * config.n_layer)  # GPT-2: residual projections scaled by depth
        attention = MultiHeadLatentAttention if config.attention == "mla" else MultiHeadAttention
        self.attn_norm = nn.RMSNorm(config.d_model)
        self.attn = attention(config, out_std)
        self.ffn_norm = nn.RMSNorm(config.d_model)
        self.ffn = MoE(config, out_std) if config.moe else MLP(config.d_model, config.d_ff, out_std)

    def forward(self, x: Tensor, cache: dict | None = None, pos: int = 0) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cache, pos)
        return x + self.ffn(self.ffn_norm(x))


def sample(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None) -> Tensor:
    """Next tokens ``(B, 1)`` from logits ``(B, vocab)``: the likeliest when ``temperature == 0``,
    else drawn from the softmax at ``temperature`` over the ``top_k`` likeliest (all if ``None``)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator)


class KVCache:
    """Preallocated per-layer cache tensors for ``batch`` sequences of up to ``max_len`` tokens."""

    def __init__(self, model: "GPT", batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str):
        if max_len > model.config.context:
            raise ValueError(f"max_len={max_len} exceeds the model's context of {model.config.context} tokens")
        self.layers = [
            {name: torch.zeros(shape, dtype=dtype, device=device) for name, shape in block.attn.cache_shapes(batch, max_len).items()}
            for block in model.blocks
        ]
        self.max_len, self.pos = max_len, 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())


class GPT(nn.Module):
    """The decoder-only transformer of Table 1, in any of the ``VARIANTS`` (MHA, MLA,
    MLA-noRoPE, MoE-MLA-RoPE), with tied input and output embeddings::

        >>> import torch
        >>> from muonlib.models import preset
        >>> model = GPT(preset("tiny", "mla"))
        >>> idx = torch.randint(0, model.config.vocab_size, (2, 8))
        >>> logits, loss = model(idx, targets=idx)
        >>> logits.shape
        torch.Size([2, 8, 512])
        >>> model.generate(idx[:, :4], 3, temperature=0).shape
        torch.Size([2, 7])
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.pos_emb = nn.Embedding(config.context, config.d_model) if config.position == "learned" else None
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=0.01)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied input/output embeddings

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``(B, T, vocab)``; with ``targets`` also the mean cross-entropy. With a
        ``cache``, ``idx`` continues the cached sequences and the cache advances."""
        logits = self.lm_head(self.hidden(idx, cache))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def hidden(self, idx: Tensor, cache: KVCache | None = None) -> Tensor:
        """The final normalised hidden states ``(B, T, d)``, before the output head (a prefill
        needs the head at the last position only)."""
        if idx.ndim != 2 or idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"idx must be a (batch, time) integer tensor, got shape {tuple(idx.shape)} and {idx.dtype}")
        B, T = idx.shape
        pos = cache.pos if cache is not None else 0
        if pos + T > (cache.max_len if cache is not None else self.config.context):
            raise ValueError(f"{pos + T} tokens exceed the context of {self.config.context} (or the cache's max_len)")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[pos : pos + T]
        for i, block in enumerate(self.blocks):
            x = block(x, cache.layers[i] if cache is not None else None, pos)
        if cache is not None:
            cache.pos += T
        return self.norm(x)

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self, batch, max_len or self.config.context, dtype or p.dtype, p.device)

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Sample ``max_new_tokens`` continuations (greedy when ``temperature == 0``, else from
        the softmax at ``temperature``, restricted to the ``top_k`` likeliest tokens) through a
        :class:`~muonlib.models.decode.Decoder`: a static KV cache, and on a GPU each step one
        CUDA graph replay. Runs in evaluation mode: decoding never counts towards MoE load
        balancing."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 or None (every token), got {top_k!r}")
        training = self.training
        self.eval()
        try:
            return self._decode(idx, max_new_tokens, temperature, top_k, generator)
        finally:
            self.train(training)

    def _decode(self, idx: Tensor, max_new_tokens: int, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> Tensor:
        decoder = Decoder(self, idx.size(0), idx.size(1) + max_new_tokens)
        logits = decoder.prefill(idx)
        out = [idx]
        for step in range(max_new_tokens):
            out.append(sample(logits, temperature, top_k, generator))
            if step + 1 < max_new_tokens:
                logits = decoder.step(out[-1])
        return torch.cat(out, dim=1)

    # ---------------------------------------------------------------- MoE upkeep

    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]

    def update_moe_biases(self) -> None:
        """The load-balancing bias update; call once per optimizer step."""
        for layer in self.moe_layers():
            layer.update_bias()

    # ---------------------------------------------------------------- counting

    def num_parameters(self, active: bool = False) -> int:
        """Parameters (the tied embedding once). ``active=True`` counts only what one token
        uses: ``top_k`` of the routed experts."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            for layer in self.moe_layers():
                routed = layer.routed_up.numel() + layer.routed_down.numel()
                total -= routed - routed * self.config.top_k // self.config.n_routed_experts
        return total
