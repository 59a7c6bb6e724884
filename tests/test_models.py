"""Models: Table 1 sizes, causality, cached decoding, absorbed MLA, MoE routing and balancing."""

import math

import numpy as np
import pytest
import torch

from muonlib.models import GPT, PAPER_PARAMS, VARIANTS, ModelConfig, expert_combinations, grouped_mm, kv_cache_bytes, preset
from muonlib.models.attention import fused_linear
from muonlib.optim import build_optimizer, classify_parameters


def tiny(variant, **changes):
    torch.manual_seed(0)
    return GPT(preset("tiny", variant, **changes)).eval()


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_parameter_counts_match_table_1(name):
    with torch.device("meta"):
        model = GPT(preset(name, "mha"))
    assert model.num_parameters() == pytest.approx(PAPER_PARAMS[name], rel=0.01)


def test_moe_counts_active_parameters():
    with torch.device("meta"):
        model = GPT(preset("XS", "moe-mla"))
    cfg = model.config
    routed = cfg.n_layer * cfg.n_routed_experts * 2 * cfg.d_model * cfg.expert_hidden
    inactive = routed - routed * cfg.top_k // cfg.n_routed_experts
    assert model.num_parameters() - model.num_parameters(active=True) == inactive


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_loss(variant):
    model = tiny(variant)
    idx = torch.randint(0, 512, (3, 17))
    logits, loss = model(idx, targets=torch.randint(0, 512, (3, 17)))
    assert logits.shape == (3, 17, 512)
    # untrained, against random targets: near the uniform log(512) (tied embeddings would
    # favour targets equal to the inputs, hence independent targets)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(512.0)).item(), rel=0.05)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    model = tiny(variant)
    idx = torch.randint(0, 512, (2, 24))
    changed = idx.clone()
    changed[:, 15:] = torch.randint(0, 512, (2, 9))
    assert torch.allclose(model(idx)[:, :15], model(changed)[:, :15], atol=1e-6)
    assert not torch.allclose(model(idx)[:, 15:], model(changed)[:, 15:], atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_decoding_equals_full_forward(variant):
    model = tiny(variant).double()
    idx = torch.randint(0, 512, (2, 30))
    full = model(idx)
    cache = model.new_cache(2, 40)
    pieces = [model(idx[:, :11], cache=cache)]  # prefill
    pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(11, 25)]  # decode one by one
    pieces.append(model(idx[:, 25:], cache=cache))  # a chunk on top of a cache
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-10)
    assert cache.pos == 30


def test_mla_caches_only_latent_and_rotary_key():
    model = tiny("mla")
    cache = model.new_cache(2, 50)
    cfg = model.config
    assert set(cache.layers[0]) == {"latent", "k_rope"}
    assert cache.nbytes() == kv_cache_bytes(cfg, 2, 50, torch.float32) == cfg.n_layer * 2 * 50 * (cfg.kv_rank + cfg.rope_head_dim) * 4
    mha = tiny("mha")
    assert mha.new_cache(2, 50).nbytes() == kv_cache_bytes(mha.config, 2, 50, torch.float32)
    # r = d/2 and d_R = D/2: 2d numbers per token for MHA against d/2 + D/2 for MLA
    assert kv_cache_bytes(preset("L", "mla"), 1, 1) / kv_cache_bytes(preset("L", "mha"), 1, 1) == pytest.approx((384 + 32) / 1536)


@pytest.mark.parametrize("variant", ["mla", "mla-norope"])
def test_absorbed_mla_equals_naive(variant):
    model = tiny(variant).double()
    attn = model.blocks[0].attn
    x = torch.randn(2, 13, model.config.d_model, dtype=torch.float64)
    for pos in (0, 5):
        cache_a = {k: torch.zeros(s, dtype=torch.float64) for k, s in attn.cache_shapes(2, 20).items()}
        cache_b = {k: v.clone() for k, v in cache_a.items()}
        if pos:  # the same earlier context in both caches
            for c in (cache_a, cache_b):
                attn(x[:, :pos], c, 0)
        a = attn(x[:, pos:], cache_a, pos, absorbed=True)
        b = attn(x[:, pos:], cache_b, pos, absorbed=False)
        assert torch.allclose(a, b, atol=1e-12)


def test_fused_projections_equal_the_separate_layers_and_keep_each_weight_its_own_gradient():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, width, bias=False) for width in (6, 3, 5)]
    x = torch.randn(2, 4, 8)
    fused = fused_linear(x, layers)
    for out, layer in zip(fused, layers, strict=True):
        torch.testing.assert_close(out, layer(x))
    sum(out.square().sum() * (i + 1) for i, out in enumerate(fused)).backward()
    for i, layer in enumerate(layers):
        w = layer.weight.detach().requires_grad_()
        ((x @ w.T).square().sum() * (i + 1)).backward()
        torch.testing.assert_close(layer.weight.grad, w.grad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_greedy_matches_argmax_of_full_forward(variant):
    model = tiny(variant)
    prompt = torch.randint(0, 512, (2, 5))
    out = model.generate(prompt, 6, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    logits = model(out[:, :-1])
    assert torch.equal(logits[:, 4:].argmax(-1), out[:, 5:])
    sampled = model.generate(prompt, 4, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 9)


def test_generate_refuses_arguments_that_would_change_its_meaning():
    model = tiny("mha")
    prompt = torch.randint(0, 512, (1, 3))
    for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_k=0), dict(top_k=-3), dict(top_k=2.5)):
        with pytest.raises(ValueError, match="temperature|top_k"):
            model.generate(prompt, 2, **bad)
    for bad in (-1, 2.0):
        with pytest.raises(ValueError, match="max_new_tokens"):
            model.generate(prompt, bad)
    assert torch.equal(model.generate(prompt, 0), prompt)


def test_generate_never_counts_towards_moe_load_balancing():
    model = tiny("moe-mla").train()
    before = {name: b.clone() for name, b in model.named_buffers() if name.endswith(("counts", "load", "bias"))}
    model.generate(torch.randint(0, 512, (2, 4)), 3)
    assert model.training  # its mode is given back
    assert all(torch.equal(b, before[name]) for name, b in model.named_buffers() if name in before)


def test_grouped_mm_fallback():
    x = torch.randn(10, 4)
    w = torch.randn(3, 4, 5)
    offsets = torch.tensor([3, 3, 10], dtype=torch.int32)  # an empty group in the middle
    expected = torch.cat([x[:3] @ w[0], x[3:] @ w[2]])
    assert torch.allclose(grouped_mm(x, w, offsets), expected)



@pytest.mark.skipif(not torch.cuda.is_available(), reason="the grouped kernel runs on a GPU")
@pytest.mark.parametrize("width", [232, 235])  # 235: rows not 16-byte aligned, which torch._grouped_mm refuses
def test_grouped_mm_on_a_gpu_takes_any_width(width):
    x = torch.randn(10, width, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3, width, 24, device="cuda", dtype=torch.bfloat16)
    offsets = torch.tensor([3, 3, 10], dtype=torch.int32, device="cuda")
    expected = torch.cat([x[:3] @ w[0], x[3:] @ w[2]])
    assert torch.allclose(grouped_mm(x, w, offsets).float(), expected.float(), rtol=2e-2, atol=2e-1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the grouped kernel runs on a GPU"))])
def test_an_expert_no_token_reaches_gets_a_zero_gradient_whatever_memory_it_is_given(device):
    # torch._grouped_mm writes only what its groups cover (pytorch#154557): an expert without
    # tokens must still get an exact zero, not what a recycled block of the allocator held
    # (here NaN, left behind in blocks of the gradients' sizes). Only the GPU's grouped kernel
    # can fail this; on a CPU grouped_mm loops over the groups.
    torch.manual_seed(0)
    moe = tiny("moe-mla").blocks[0].ffn.to(device)
    starved = torch.zeros(moe.routed_up.size(0), dtype=torch.bool)
    starved[[1, 4]] = True
    with torch.no_grad():
        moe.router.bias[starved.to(device)] = -1e4  # never among a token's top k
    x = torch.randn(64, moe.routed_up.size(-1), device=device)
    for _ in range(2):
        [torch.full_like(p, math.nan, dtype=dtype) for p in (moe.routed_up, moe.routed_down) for dtype in (torch.bfloat16, torch.float32)]
        moe.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16):
            moe(x).float().square().sum().backward()
        for p in (moe.routed_up, moe.routed_down):
            reached = p.grad.flatten(1).abs().sum(1).cpu() > 0
            assert torch.isfinite(p.grad).all() and torch.equal(reached, ~starved)


def test_moe_layer_matches_dense_reference():
    model = tiny("moe-mla")
    moe = model.blocks[0].ffn
    x = torch.randn(7, model.config.d_model)
    experts, gates = moe.router(x, moe.top_k)
    act = torch.nn.functional.gelu
    ref = torch.zeros_like(x)
    for n in range(7):
        for s in range(moe.shared_up.size(0)):
            ref[n] += moe.shared_down[s] @ act(moe.shared_up[s] @ x[n])
        for e, g in zip(experts[n], gates[n]):
            ref[n] += g * (moe.routed_down[e] @ act(moe.routed_up[e] @ x[n]))
    assert torch.allclose(moe(x), ref, atol=1e-5)
    assert torch.allclose(gates.sum(-1), torch.ones(7))


def test_bias_only_selects_and_update_is_signed_and_zero_sum():
    model = tiny("moe-mla")
    router = model.blocks[0].ffn.router
    x = torch.randn(64, model.config.d_model)
    _, gates_before = router(x, 2)
    router.bias.copy_(torch.tensor([10.0, 10.0] + [0.0] * 6))  # forces experts 0 and 1
    experts, gates = router(x, 2)
    assert set(experts.flatten().tolist()) == {0, 1}
    scores = torch.sigmoid(x @ router.weight.T)[:, :2]
    assert torch.allclose(gates.sort(-1).values, (scores / scores.sum(-1, keepdim=True)).sort(-1).values)
    router.train()
    router.counts.zero_()
    router.bias.zero_()
    router(x, 2)  # training forward counts
    load = router.counts / router.counts.sum()
    router.update_bias(0.1)
    assert router.bias.sum().abs() < 1e-6
    assert torch.all(torch.sign(router.bias) == -torch.sign(load - 1 / 8)) or torch.all((load - 1 / 8).abs() < 1e-9)
    assert router.counts.sum() == 0 and torch.allclose(router.load, load)


def test_bias_rule_balances_a_skewed_stream():
    torch.manual_seed(1)
    cfg = preset("tiny", "moe-mla", n_routed_experts=16, top_k=2, bias_update_rate=0.05)
    moe = GPT(cfg).blocks[0].ffn.train()
    skew = torch.randn(cfg.d_model) * 3  # every token shares a direction: a few experts win at first

    def max_violation_over(batches):
        # loads accumulated over many batches, so sampling noise (32 slots per expert per
        # batch) does not dominate; rate 0 reads the statistics without moving the bias
        with torch.no_grad():
            for _ in range(batches):
                moe(torch.randn(256, cfg.d_model) + skew)
        moe.router.update_bias(0.0)
        return moe.load_statistics()["max_violation"].item()

    before = max_violation_over(50)
    for _ in range(300):
        with torch.no_grad():
            moe(torch.randn(256, cfg.d_model) + skew)
        moe.update_bias()
    after = max_violation_over(50)
    assert before > 2.0 and after < 0.15, (before, after)
    assert moe.load_statistics()["starved"] == 0
    moe.router.bias[:4] = -1e4  # four experts never among a token's top k
    max_violation_over(50)
    assert moe.load_statistics()["starved"] == 4


def test_balancing_state_stays_fp32_in_a_bf16_model():
    model = tiny("moe-mla").to(torch.bfloat16).train()
    router = model.blocks[0].ffn.router
    assert {router.bias.dtype, router.counts.dtype, router.load.dtype} == {torch.float32}
    assert router.weight.dtype == torch.bfloat16
    model(torch.randint(0, 512, (8, 64)))  # 512 tokens x top-2: counts well past bf16's exact range
    assert router.counts.sum().item() == 8 * 64 * model.config.top_k


def test_muon_routing_on_a_real_model():
    model = tiny("moe-mla")
    roles = {r: {n for n, _ in v} for r, v in classify_parameters(model).items()}
    assert roles["embedding"] == {"tok_emb.weight"} and roles["head"] == set()
    assert "blocks.0.ffn.router.weight" in roles["router"]
    assert {"blocks.0.ffn.routed_up", "blocks.0.attn.kv_down.weight"} <= roles["hidden"]
    opt = build_optimizer(model, "muon")
    model.train()
    idx = torch.randint(0, 512, (4, 16))
    _, loss = model(idx, idx)
    loss.backward()
    opt.step()
    model.update_moe_biases()
    assert model.blocks[0].ffn.router.bias.abs().sum() > 0


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(d_model=100, n_head=8), "not divisible"),
        (dict(attention="mla", latent_rank=300), "latent_rank"),
        (dict(moe=True, top_k=70), "top_k"),
        (dict(attention="gqa"), "attention"),
    ],
)
def test_inconsistent_configs_fail_clearly(changes, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**changes)


def test_bad_inputs_fail_clearly():
    model = tiny("mha")
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match="exceed the context"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.new_cache(1, 100)


def test_the_stated_expert_spec_gives_c_62_6_combinations_not_3_6e7():
    spec = preset("XL", "moe-mla")
    assert (spec.n_shared_experts, spec.n_routed_experts, spec.top_k) == (2, 62, 6)
    assert expert_combinations(spec) == 61_474_519 and abs(expert_combinations(spec) / 3.6e7 - 1) > 0.5


# ---------------------------------------------------------------- attention entropy

from muonlib.models.attention import attention_entropy, recording_attention_entropy  # noqa: E402


def test_attention_entropy_is_ln_n_for_uniform_attention_and_zero_for_a_single_key():
    T, H = 6, 2
    uniform = attention_entropy(torch.zeros(1, H, T, 4), torch.zeros(1, H, T, 4), pos=0)
    assert torch.allclose(uniform, torch.full((H,), float(np.mean(np.log(np.arange(1, T + 1)))), dtype=torch.float32), atol=1e-6)
    k = torch.zeros(1, 1, T, 1)
    k[..., 0, 0] = 100.0  # the first key dominates every visible row
    assert attention_entropy(torch.ones(1, 1, T, 1), k, pos=0, scale=1.0).item() < 1e-6
    # a query at absolute position 3 of a longer cache sees 4 keys, not the later ones
    assert torch.allclose(attention_entropy(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, T, 4), pos=3), torch.tensor([np.log(4.0)], dtype=torch.float32), atol=1e-6)


@pytest.mark.parametrize("variant", ["mha", "mla", "mla-norope"])
def test_recording_attention_entropy_leaves_the_output_alone_and_the_absorbed_path_agrees(variant):
    model = tiny(variant).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        plain = model(idx)
        with recording_attention_entropy() as recorded:
            again = model(idx)
    assert torch.equal(plain, again) and len(recorded) == model.config.n_layer
    assert all(e.shape == (model.config.n_head,) and (e >= 0).all() and (e <= np.log(16) + 1e-5).all() for e in recorded)
    with recording_attention_entropy() as outside:
        pass
    model(idx)
    assert outside == []  # nothing is recorded once the block is left
    if variant != "mha":  # decompressed and absorbed attention are the same distribution
        attention, x = model.blocks[0].attn, torch.randn(2, 16, model.config.d_model)
        entropies = []
        for absorbed in (False, True):
            with torch.no_grad(), recording_attention_entropy() as recorded:
                attention(x, absorbed=absorbed)
            entropies += recorded
        assert torch.allclose(*entropies, atol=1e-4)


@pytest.mark.parametrize("variant", ["mha", "mla"])
def test_the_entropy_recorder_costs_training_no_graph_break(variant):
    explained = torch._dynamo.explain(tiny(variant))(torch.randint(0, 512, (2, 16)))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
