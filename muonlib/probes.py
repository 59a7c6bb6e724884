"""What a trained model does beyond its loss: how spread out each attention head's weights
are on held-out text, and how it continues a few fixed prompts.

The experiment runner keeps no weights (a model of S's size would not fit through the
device's return path), so an experiment that wants these (``Experiment.probes``) has each
run measure them from its last checkpoint and write them into its result's final record.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import evaluation_batches, gpt2_tokenizer
from .models import GPT
from .models.attention import recording_attention_entropy

#: prompts in the registers of the offline mixture, fiction (Gutenberg, Brown) and speeches
#: (the State of the Union)
PROMPTS = ("It was a dark and stormy night, and", "Mr. Speaker, the state of our Union is", "She opened the letter and")
ENTROPY_TOKENS = 2**15  # held-out tokens the entropies average over
SAMPLING = {"temperature": 0.8, "top_k": 50}


@torch.no_grad()
def attention_entropy_by_head(model: GPT, tokens: np.ndarray, batch: int = 8, max_tokens: int = ENTROPY_TOKENS) -> list[list[float]]:
    """Mean entropy (nats) of every head's attention distribution, ``[layer][head]``, over
    evenly spread windows of held-out ``tokens`` (every query position, causal). Uniform
    attention over ``n`` earlier positions has entropy ``ln n``; a head that looks at one
    token has 0."""
    device = next(model.parameters()).device
    windows = evaluation_batches(tokens, batch, model.config.context, max_tokens)
    was_training = model.training
    model.eval()
    try:
        with recording_attention_entropy() as recorded:
            for x, _ in windows:
                model(x.to(device))
    finally:
        model.train(was_training)
    per_call = torch.stack(recorded).view(len(windows), model.config.n_layer, -1)
    return per_call.mean(0).tolist()


def continuations(model: GPT, prompts: tuple[str, ...] = PROMPTS, new_tokens: int = 40, seed: int = 0) -> list[dict]:
    """Each prompt continued greedily and by sampling (``SAMPLING``, a fixed seed), by
    ``new_tokens`` or as many as the model's context leaves."""
    encoding = gpt2_tokenizer()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    for prompt in prompts:
        idx = torch.tensor([encoding.encode(prompt)], device=device)
        n = min(new_tokens, model.config.context - idx.size(1))
        greedy = model.generate(idx, n, temperature=0.0)
        sampled = model.generate(idx, n, generator=generator, **SAMPLING)
        out.append({"prompt": prompt, "greedy": encoding.decode(greedy[0, idx.size(1):].tolist()),
                    "sampled": encoding.decode(sampled[0, idx.size(1):].tolist())})
    return out


def probe(model: GPT, held_out: np.ndarray) -> dict:
    """Everything this module measures, as a JSON-ready dict."""
    return {"attention_entropy": attention_entropy_by_head(model, held_out), "continuations": continuations(model)}


__all__ = ["ENTROPY_TOKENS", "PROMPTS", "SAMPLING", "attention_entropy_by_head", "continuations", "probe"]
