"""QuantizableAttention computes what nn.MultiheadAttention computes, and once it replaces the
attention of a Transformer, torch's fused inference path can no longer skip lowbit's layers."""

import copy
import itertools

import pytest
import torch
from torch import nn

import lowbit
from lowbit import LowbitError
from lowbit.nn.attention import QuantizableAttention, replace_attention

E, HEADS, N, L, S = 16, 4, 3, 5, 7
# torch's fused encoder path (the float references) warns that nested tensors are a prototype.
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")


def _mha(batch_first=False, kdim=None, vdim=None, bias=True, dropout=0.0, dtype=None):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(
        E, HEADS, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first,
        dtype=dtype,
    )
    if bias:  # torch initializes the biases to 0, which would hide a bias mix-up
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha


def _inputs(batch_first, kdim=None, vdim=None, batched=True):
    def tensor(length, dim):
        if not batched:
            return torch.randn(length, dim)
        return torch.randn(N, length, dim) if batch_first else torch.randn(length, N, dim)

    return tensor(L, E), tensor(S, kdim or E), tensor(S, vdim or E)


def _masks(batched=True, source=S):
    torch.manual_seed(1)
    padding = torch.zeros(N, source, dtype=torch.bool)
    padding[0, -2:] = True
    padding[2, 1] = True
    attn = torch.rand(L, source) > 0.7
    attn[:, 0] = False  # no fully masked row (NaN in both)
    attn3 = torch.randn(N * HEADS, L, source)
    if not batched:
        return {
            "padding": dict(key_padding_mask=padding[0]),
            "attn 3-D": dict(attn_mask=attn3[:HEADS]),
            "both": dict(attn_mask=attn, key_padding_mask=padding[0]),
        }
    return {
        "none": {},
        "bool padding": dict(key_padding_mask=padding),
        "float padding": dict(key_padding_mask=padding.float() * -1e4),
        "bool 2-D": dict(attn_mask=attn),
        "float 3-D": dict(attn_mask=attn3),
        "both bool": dict(attn_mask=attn, key_padding_mask=padding),
        "both float": dict(attn_mask=attn3, key_padding_mask=padding.float() * -1e4),
    }


def _assert_same(expected, actual):
    torch.testing.assert_close(actual[0], expected[0])
    if expected[1] is None:
        assert actual[1] is None
    else:
        torch.testing.assert_close(actual[1], expected[1])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("dims", [(None, None), (12, 20)], ids=["kv=E", "kdim12-vdim20"])
@pytest.mark.parametrize("mode", ["train", "eval", "eval-no-grad"])
def test_equals_multihead_attention(batch_first, dims, mode):
    """Every mask kind, with and without weights (per head or averaged), in training
    (dropout 0) and evaluation, with autograd and without (where torch has a fused path)."""
    kdim, vdim = dims
    mha = _mha(batch_first, kdim, vdim)
    attention = QuantizableAttention.from_float(mha)
    for module in (mha, attention):
        module.train(mode == "train")
    query, key, value = _inputs(batch_first, kdim, vdim)
    calls = [((query, key, value), _masks())]
    if kdim is None:  # self-attention: torch's fast path in eval without autograd
        calls.append(((query, query, query), _masks(source=L)))
    options = [dict(need_weights=w, average_attn_weights=a)
               for w, a in [(True, True), (True, False), (False, True)]]
    with torch.no_grad() if mode == "eval-no-grad" else torch.enable_grad():
        for ((q, k, v), masks), option in itertools.product(calls, options):
            for mask in masks.values():
                expected = mha(q, k, v, **mask, **option)
                _assert_same(expected, attention(q, k, v, **mask, **option))


@pytest.mark.parametrize("need_weights", [False, True])
def test_unbatched_inputs(need_weights):
    mha = _mha(kdim=12, vdim=20)
    attention = QuantizableAttention.from_float(mha)
    query, key, value = _inputs(False, 12, 20, batched=False)
    for mask in _masks(batched=False).values():
        expected = mha(query, key, value, need_weights=need_weights, **mask)
        actual = attention(query, key, value, need_weights=need_weights, **mask)
        _assert_same(expected, actual)
        assert actual[0].shape == (L, E)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_is_causal_hint(need_weights, padding):
    mha = _mha(batch_first=True)
    attention = QuantizableAttention.from_float(mha)
    x = torch.randn(N, L, E)
    causal = nn.Transformer.generate_square_subsequent_mask(L)
    mask = dict(attn_mask=causal, is_causal=True, need_weights=need_weights)
    if padding:  # float, as the causal mask (torch warns about mixed mask types)
        mask["key_padding_mask"] = torch.zeros(N, L)
        mask["key_padding_mask"][0, -1] = float("-inf")
    _assert_same(mha(x, x, x, **mask), attention(x, x, x, **mask))
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        attention(x, x, x, is_causal=True)


def test_no_bias_and_float64():
    mha = _mha(bias=False, dtype=torch.float64)
    attention = QuantizableAttention.from_float(mha)
    assert attention.q_proj.bias is None and attention.out_proj.bias is None
    assert attention.q_proj.weight.dtype == torch.float64
    query, key, value = (t.double() for t in _inputs(False))
    _assert_same(mha(query, key, value), attention(query, key, value))


def test_from_float_copies_weights_into_plain_linears():
    mha = _mha(kdim=12, vdim=20).eval()
    mha.out_proj.weight.requires_grad_(False)
    attention = QuantizableAttention.from_float(mha)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert type(getattr(attention, name)) is nn.Linear
    torch.testing.assert_close(attention.k_proj.weight, mha.k_proj_weight, rtol=0, atol=0)
    torch.testing.assert_close(attention.v_proj.bias, mha.in_proj_bias[2 * E:], rtol=0, atol=0)
    assert not attention.training
    assert not attention.out_proj.weight.requires_grad and attention.q_proj.weight.requires_grad
    assert attention.k_proj.weight.data_ptr() != mha.k_proj_weight.data_ptr()  # a copy


def test_dropout_in_training_only():
    mha = _mha(dropout=0.5)
    attention = QuantizableAttention.from_float(mha)
    query, key, value = _inputs(False)
    for need_weights in (False, True):
        first = attention(query, key, value, need_weights=need_weights)[0]
        second = attention(query, key, value, need_weights=need_weights)[0]
        assert not torch.allclose(first, second)
    mha.eval(), attention.eval()
    _assert_same(mha(query, key, value), attention(query, key, value))


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_unsupported_options_stay_float(option):
    mha = nn.MultiheadAttention(E, HEADS, **{option: True})
    with pytest.raises(LowbitError, match=f"{option}.*stays float"):
        QuantizableAttention.from_float(mha)
    model = nn.Sequential(mha)
    assert replace_attention(model) == []
    assert model[0] is mha
    with pytest.warns(UserWarning, match=r"stay float: 1 \(MultiheadAttention\)$"):
        lowbit.quantize(nn.Sequential(nn.Linear(E, E), mha, nn.Linear(E, E)), "lsq", 4)


def test_replace_attention_keeps_shared_modules_shared():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.MultiheadAttention(E, HEADS)
            self.b = self.a
            self.inner = nn.ModuleList([nn.MultiheadAttention(E, HEADS)])

    model = Shared()
    assert replace_attention(model) == ["a", "inner.0"]
    assert isinstance(model.a, QuantizableAttention) and model.b is model.a
    assert isinstance(model.inner[0], QuantizableAttention)
    assert replace_attention(model) == []
    with pytest.raises(LowbitError, match="wrap it"):
        replace_attention(nn.MultiheadAttention(E, HEADS))


def _encoder(batch_first: bool) -> nn.TransformerEncoder:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
    # torch's nested tensors need batch_first (it warns otherwise)
    return nn.TransformerEncoder(
        layer, 2, norm=nn.LayerNorm(32), enable_nested_tensor=batch_first
    )


def _source(batch_first: bool):
    torch.manual_seed(2)
    x = torch.randn(3, 6, 32) if batch_first else torch.randn(6, 3, 32)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, -2:] = True
    return x, padding


@pytest.mark.parametrize("batch_first", [False, True])
def test_encoder_with_replaced_attention_equals_the_float_encoder(batch_first):
    """Two layers and a final LayerNorm, d_model 32, 4 heads, in training (dropout 0) and in
    evaluation with and without autograd, with and without a padding mask. torch's fused path
    (eval, no autograd, padding mask) returns 0 at padded positions; the others are compared."""
    reference = _encoder(batch_first)
    encoder = copy.deepcopy(reference)
    assert replace_attention(encoder) == ["layers.0.self_attn", "layers.1.self_attn"]
    x, padding = _source(batch_first)
    kept = ~padding if batch_first else ~padding.T
    for mode, grad in [("train", True), ("eval", True), ("eval", False)]:
        reference.train(mode == "train"), encoder.train(mode == "train")
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(encoder(x), reference(x))
            torch.testing.assert_close(
                encoder(x, src_key_padding_mask=padding)[kept],
                reference(x, src_key_padding_mask=padding)[kept],
            )


def test_decoder_and_transformer_equal_the_float_modules():
    torch.manual_seed(0)
    reference = nn.Transformer(32, 4, 1, 1, 64, dropout=0.0, batch_first=True).eval()
    model = copy.deepcopy(reference)
    assert len(replace_attention(model)) == 3  # encoder self, decoder self and cross attention
    src, tgt = torch.randn(2, 6, 32), torch.randn(2, 4, 32)
    causal = nn.Transformer.generate_square_subsequent_mask(4)
    with torch.no_grad():
        expected = reference(src, tgt, tgt_mask=causal, tgt_is_causal=True)
        torch.testing.assert_close(model(src, tgt, tgt_mask=causal, tgt_is_causal=True), expected)


def test_state_dict_round_trip_of_a_quantized_encoder():
    source = _encoder(True)
    replace_attention(source)
    lowbit.quantize(source, "maxscale", 4)
    target = _encoder(True)
    replace_attention(target)
    lowbit.quantize(target, "maxscale", 4)
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    target.load_state_dict(source.state_dict())
    assert "layers.0.self_attn.q_proj.weight" in source.state_dict()
    x, _ = _source(True)
    torch.testing.assert_close(target.eval()(x), source.eval()(x), rtol=0, atol=0)


class FastPathCalled(AssertionError):
    pass


@pytest.fixture
def fast_path_raises(monkeypatch):
    """torch's fused encoder kernels raise, so a test sees whether they are used."""

    def fused(*_, **__):
        raise FastPathCalled

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", fused)
    monkeypatch.setattr(torch, "_nested_tensor_from_mask", fused)


@pytest.mark.parametrize("padding", [False, True], ids=["no-mask", "padding-mask"])
def test_quantized_encoder_in_eval_never_takes_torchs_fused_path(fast_path_raises, padding):
    """Under eval + no_grad a float encoder runs torch._transformer_encoder_layer_fwd (and,
    with a padding mask, nested tensors), which read in_proj_weight / linear1.weight directly.
    After replace_attention and quantize the quantized layers run: q_proj's hook fires, the
    output is the one computed with autograd on (never fused) and differs from the float one."""
    float_encoder = _encoder(True).eval()
    encoder = copy.deepcopy(float_encoder)
    x, mask = _source(True)
    kwargs = {"src_key_padding_mask": mask} if padding else {}
    with torch.no_grad(), pytest.raises(FastPathCalled):
        float_encoder(x, **kwargs)  # the test can fail: the float encoder is fused here
    replace_attention(encoder)
    lowbit.quantize(encoder, "maxscale", 2, first_last_bits=2)
    calls = []
    encoder.layers[1].self_attn.q_proj.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        quantized = encoder(x, **kwargs)
    assert calls == [1]
    with torch.enable_grad():
        unfused = encoder(x, **kwargs)
    torch.testing.assert_close(quantized, unfused.detach())
    with torch.enable_grad():
        reference = float_encoder(x, **kwargs).detach()
    assert (quantized - reference).abs().mean() > 0.05


def test_fused_path_is_refused_without_hooks(fast_path_raises):
    """A forward hook itself turns torch >= 2.3's layer fast path off, so check without one:
    the layer (not only the encoder) runs its Python path after replace_attention."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad(), pytest.raises(FastPathCalled):
        layer(x)
    holder = nn.Sequential(layer)
    replace_attention(holder)
    lowbit.quantize(holder, "maxscale", 2, first_last_bits=2)
    with torch.no_grad():
        quantized = layer(x)
    torch.testing.assert_close(quantized, layer(x).detach())
