"""The static-cache decode path: every step's logits are the full forward pass's, across the
length buckets its attention reads, for every variant; its refusals; and on a GPU the CUDA
graph replays give the eager step's tokens."""

import pytest
import torch
from torch._dynamo.utils import counters

from muonlib.models import GPT, VARIANTS, Decoder, preset
from muonlib.models.decode import LENGTH_BUCKET, graph_safe, latent_kernel_fits


def model_of(variant, dtype=torch.float64, device="cpu", **changes):
    torch.manual_seed(0)
    return GPT(preset("tiny", variant, context=3 * LENGTH_BUCKET, **changes)).to(device=device, dtype=dtype).eval()


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_each_step_gives_the_full_forward_logits_across_length_buckets(variant):
    model = model_of(variant)
    prompt_len, steps = LENGTH_BUCKET - 5, LENGTH_BUCKET + 10  # crosses two bucket boundaries
    tokens = torch.randint(0, 512, (2, prompt_len + steps))
    full = model(tokens)
    decoder = Decoder(model, 2, prompt_len + steps)
    logits = decoder.prefill(tokens[:, :prompt_len])
    assert torch.allclose(logits, full[:, prompt_len - 1], atol=1e-10)
    for t in range(prompt_len, prompt_len + steps - 1):
        logits = decoder.step(tokens[:, t : t + 1])
        assert torch.allclose(logits, full[:, t], atol=1e-10), f"step at position {t}"
    assert decoder.position == prompt_len + steps - 1


@torch.no_grad()
def test_the_decoder_refuses_what_it_cannot_do():
    model = model_of("mha")
    decoder = Decoder(model, 2, 8)
    with pytest.raises(ValueError, match="holds 2 sequences"):
        decoder.prefill(torch.zeros(3, 4, dtype=torch.long))
    decoder.prefill(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="cache is full"):
        decoder.step(torch.zeros(2, 1, dtype=torch.long))
    assert not graph_safe(model)  # a CPU model has nothing to capture
    with pytest.raises(ValueError, match="cannot be captured"):
        Decoder(model, 2, 8, cuda_graphs=True)
    decoder.prefill(torch.zeros(2, 3, dtype=torch.long))  # a new prompt starts the cache over
    assert decoder.position == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_graph_replays_give_the_eager_steps_tokens(variant):
    dtype = torch.bfloat16 if variant == "moe-mla" else torch.float32  # MoE is capturable through grouped_mm in bf16
    model = model_of(variant, dtype=dtype, device="cuda")
    if not graph_safe(model):
        pytest.skip("MoE routing synchronises with the host on this GPU")
    prompt = torch.randint(0, 512, (4, 10), device="cuda")
    outputs = []
    for graphs in (False, True):
        decoder = Decoder(model, 4, 10 + LENGTH_BUCKET + 5, cuda_graphs=graphs)
        logits, tokens = decoder.prefill(prompt), []
        for _ in range(LENGTH_BUCKET + 5):
            tokens.append(logits.argmax(-1, keepdim=True))
            logits = decoder.step(tokens[-1])
        outputs.append(torch.cat(tokens, 1))
    assert torch.equal(*outputs)


@pytest.mark.parametrize("variant", ["mla", "mla-norope"])
@torch.no_grad()
def test_steps_through_the_latent_attention_kernel_give_the_full_forward_logits(variant):
    # On a CPU the Triton kernel runs in the interpreter (tests/conftest.py).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_of(variant, dtype=torch.float32, device=device)
    prompt_len, steps = LENGTH_BUCKET - 3, 6  # crosses a bucket boundary
    tokens = torch.randint(0, 512, (2, prompt_len + steps), device=device)
    full = model(tokens)
    decoder = Decoder(model, 2, prompt_len + steps, cuda_graphs=False, latent_kernel=True)
    decoder.prefill(tokens[:, :prompt_len])
    for t in range(prompt_len, prompt_len + steps - 1):
        logits = decoder.step(tokens[:, t : t + 1])
        assert torch.allclose(logits, full[:, t], atol=1e-4, rtol=1e-4), f"step at position {t}"
    assert not latent_kernel_fits(model_of(variant))  # a CPU model takes plain torch by default


@pytest.mark.parametrize("variant, latent_kernel", [("mha", None), ("mla", False), ("mla", True)],
                         ids=["mha", "mla-torch", "mla-kernel"])
@torch.no_grad()
def test_a_compiled_step_gives_the_eager_steps_logits_across_length_buckets(variant, latent_kernel):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_of(variant, dtype=torch.float32, device=device)
    prompt_len, steps = LENGTH_BUCKET - 2, 4  # two lengths through one compilation
    tokens = torch.randint(0, 512, (2, prompt_len + steps), device=device)
    logits = {}
    torch._dynamo.reset()
    graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    for compiled in (False, True):
        decoder = Decoder(model, 2, prompt_len + steps, latent_kernel=latent_kernel, compile=compiled)
        decoder.prefill(tokens[:, :prompt_len])
        logits[compiled] = torch.stack([decoder.step(tokens[:, t : t + 1]) for t in range(prompt_len, prompt_len + steps)])
    assert torch.allclose(logits[True], logits[False], atol=1e-4, rtol=1e-4)
    # the step was compiled, and whole: no graph break (at the kernel's op or elsewhere)
    assert counters["stats"]["unique_graphs"] > graphs and sum(counters["graph_break"].values()) == breaks
