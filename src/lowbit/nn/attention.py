"""``QuantizableAttention``: ``nn.MultiheadAttention`` with its projections as ``nn.Linear``.

``nn.MultiheadAttention`` keeps its query/key/value projections in one packed parameter
(``in_proj_weight``) or three bare ones (``q_proj_weight``, ...), which no layer swap can
quantize. ``QuantizableAttention`` computes the same function (multi-head attention of
"Attention Is All You Need", §3.2.2: ``softmax(Q K^T / sqrt(d_k) + mask) V`` per head, then
the output projection) from four ``nn.Linear`` children ``q_proj``, ``k_proj``, ``v_proj`` and
``out_proj``, which ``lowbit.quantize`` then quantizes like any other Linear.

``replace_attention(model)`` swaps every ``nn.MultiheadAttention`` of a model for one.

torch's Transformer fast path: in evaluation without autograd, ``nn.TransformerEncoderLayer``
calls the fused ``torch._transformer_encoder_layer_fwd`` with ``self_attn.in_proj_weight``,
``linear1.weight`` ... read directly, and ``nn.TransformerEncoder`` first packs its input into
a nested tensor for it; that path would skip every quantizer. The layer takes it only if
``self_attn._qkv_same_embed_dim`` is true (checked by every torch from 2.2 to 2.13) and
``self_attn.in_proj_bias is not None`` (checked, before it, since ``bias=False`` layers came):
a ``QuantizableAttention`` has ``_qkv_same_embed_dim = False`` and ``in_proj_bias = None``
(its projections are separate, as in an ``nn.MultiheadAttention`` with ``kdim != embed_dim``),
so both checks fail before any tensor is read and the layer runs its Python path, which calls
``self_attn``, ``linear1`` and ``linear2`` as modules. The encoder decides on nested tensors
from ``use_nested_tensor``, set once in its ``__init__`` from the same checks, so
``replace_attention`` clears it on every encoder whose layers it changed.
``nn.TransformerDecoderLayer`` has no fast path (torch 2.2 to 2.13).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import LowbitError


class QuantizableAttention(nn.Module):
    """Multi-head attention with ``nn.Linear`` projections; ``forward`` has
    ``nn.MultiheadAttention.forward``'s signature and result (module docstring).

    Build one with ``from_float``. ``add_bias_kv`` and ``add_zero_attn`` are not supported.
    """

    # torch's fast-path checks read these (module docstring); they say what is true here:
    # the projections are separate modules, not a packed in_proj_weight / in_proj_bias.
    _qkv_same_embed_dim = False
    in_proj_weight = None
    in_proj_bias = None

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise LowbitError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout, self.batch_first = dropout, batch_first
        factory = {"bias": bias, "device": device, "dtype": dtype}
        self.q_proj = nn.Linear(embed_dim, embed_dim, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **factory)

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention) -> QuantizableAttention:
        """The attention of ``mha`` with copies of its weights (same device, dtype,
        ``requires_grad`` and training mode). An optimizer must be built after the swap."""
        unsupported = [name for name in ("add_bias_kv", "add_zero_attn") if _has(mha, name)]
        if unsupported:
            raise LowbitError(
                f"nn.MultiheadAttention with {' and '.join(unsupported)} has no quantizable "
                "form in lowbit; that layer stays float"
            )
        weight = mha.out_proj.weight
        q = cls(
            mha.embed_dim,
            mha.num_heads,
            dropout=mha.dropout,
            bias=mha.in_proj_bias is not None,
            kdim=mha.kdim,
            vdim=mha.vdim,
            batch_first=mha.batch_first,
            device=weight.device,
            dtype=weight.dtype,
        )
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.chunk(3)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = (None,) * 3 if mha.in_proj_bias is None else mha.in_proj_bias.chunk(3)
        sources = [*zip(weights, biases), (mha.out_proj.weight, mha.out_proj.bias)]
        for linear, (w, b) in zip((q.q_proj, q.k_proj, q.v_proj, q.out_proj), sources):
            _copy_into(linear.weight, w)
            if b is not None:
                _copy_into(linear.bias, b)
        return q.train(mha.training)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward``: inputs ``(L, E)`` unbatched, ``(L, N, E)`` or,
        with ``batch_first``, ``(N, L, E)``; boolean masks mark positions to ignore, float
        masks are added to the attention logits; ``attn_mask`` is ``(L, S)`` or
        ``(N * num_heads, L, S)``. ``is_causal`` is a hint that ``attn_mask`` is causal and
        needs ``attn_mask``, as in torch. Returns the output and, when ``need_weights``, the
        attention weights (averaged over heads when ``average_attn_weights``)."""
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(
                "query, key and value must all be 2-D (unbatched) or all 3-D (batched), got "
                f"{query.dim()}-D, {key.dim()}-D and {value.dim()}-D"
            )
        # Work batch first: (N, L, E).
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention)"
            )
        # As torch: the hint replaces the mask only where SDPA can apply it alone.
        causal = is_causal and key_padding_mask is None and not need_weights
        batch, target, source = query.shape[0], query.shape[1], key.shape[1]
        mask = None if causal else _additive_mask(
            attn_mask, key_padding_mask, batch, self.num_heads, target, source, query.dtype
        )
        q, k, v = (
            self._heads(projection(x))
            for projection, x in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value))
        )
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            logits = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
            weights = torch.softmax(logits if mask is None else logits + mask, dim=-1)
            if dropout > 0.0:
                weights = F.dropout(weights, p=dropout)
            heads = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            heads = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal
            )
        out = self.out_proj(heads.transpose(1, 2).reshape(batch, target, self.embed_dim))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, E)`` -> ``(N, heads, L, head_dim)``."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"batch_first={self.batch_first}"
        )


def _has(mha: nn.MultiheadAttention, option: str) -> bool:
    if option == "add_bias_kv":
        return mha.bias_k is not None or mha.bias_v is not None
    return bool(mha.add_zero_attn)


def _copy_into(parameter: nn.Parameter, source: torch.Tensor) -> None:
    with torch.no_grad():
        parameter.copy_(source)
    parameter.requires_grad_(source.requires_grad)


def _additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    batch: int,
    heads: int,
    target: int,
    source: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """The masks as one float tensor added to the logits, broadcasting against
    ``(N, heads, L, S)``: ``True`` becomes ``-inf``, as ``nn.MultiheadAttention`` does."""
    mask = None
    if attn_mask is not None:
        attn_mask = _as_float(attn_mask, "attn_mask", dtype)
        if attn_mask.dim() == 2:
            mask = attn_mask.view(1, 1, target, source)
        else:  # (N * heads, L, S), heads fastest (unbatched: (heads, L, S))
            mask = attn_mask.view(batch, heads, target, source)
    if key_padding_mask is not None:
        padding = _as_float(key_padding_mask, "key_padding_mask", dtype).view(batch, 1, 1, source)
        mask = padding if mask is None else mask + padding
    return mask


def _as_float(mask: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise ValueError(f"only bool and floating types of {name} are supported")
    return mask


def replace_attention(model: nn.Module) -> list[str]:
    """Swap every ``nn.MultiheadAttention`` of ``model`` (in place) for a
    ``QuantizableAttention``; return the swapped names, in registration order.

    One attention module reached by several names stays one module. An attention
    ``from_float`` cannot convert (``add_bias_kv``, ``add_zero_attn``), or a subclass of
    ``nn.MultiheadAttention``, stays float (``lowbit.quantize`` lists it among the layers it
    leaves float). Every ``nn.TransformerEncoder`` whose layers hold a swapped attention gets
    ``use_nested_tensor = False``, which is what its ``__init__`` would have set (module
    docstring: torch's fast path). An ``nn.TransformerEncoderLayer`` whose attention stays
    float gets ``activation_relu_or_gelu = 0``, which only the fused path reads (torch 2.2 to
    2.13), so it still calls its ``linear1`` / ``linear2`` as modules once they are quantized.
    """
    if isinstance(model, nn.MultiheadAttention):
        raise LowbitError(
            "the model itself is an nn.MultiheadAttention; wrap it in a module to replace it"
        )
    swapped: list[str] = []
    replacements: dict[int, QuantizableAttention | None] = {}  # by id: shared stays shared
    for parent_name, parent in list(model.named_modules()):
        # _modules, not named_children(): that lists a module held twice by one parent once.
        for child_name, child in list(parent._modules.items()):
            if not isinstance(child, nn.MultiheadAttention):
                continue
            if id(child) not in replacements:
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                replacements[id(child)] = _convert(child)
                if replacements[id(child)] is not None:
                    swapped.append(name)
            if replacements[id(child)] is not None:
                setattr(parent, child_name, replacements[id(child)])
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
        if isinstance(module, nn.TransformerEncoderLayer) and not isinstance(
            module.self_attn, QuantizableAttention
        ):
            module.activation_relu_or_gelu = 0
    return swapped


def _convert(mha: nn.MultiheadAttention) -> QuantizableAttention | None:
    if type(mha) is not nn.MultiheadAttention:  # a subclass may compute something else
        return None
    try:
        return QuantizableAttention.from_float(mha)
    except LowbitError:
        return None
