"""A small decoder-only transformer (GPT-2 layout) in MindSpore, for byte-level language modelling.

* Vocabulary: 256 byte values + 1 padding id (``examples.gpt_lm.data.PAD`` = 256). The token embedding has
  257 rows; the padding row is only ever an input (padding sits at the end of a sequence, so
  under the causal mask no real position attends to it).
* Learned token + position embeddings (``max_positions`` rows), pre-LayerNorm blocks
  (causal multi-head self-attention, GELU MLP 4x, residual connections), a final LayerNorm.
* **Tied output head**: logits = h @ wte[:256].T, the first 256 rows of the token embedding
  (the byte values; the padding row is never predicted).
* Initialisation like GPT-2: every weight matrix and both embeddings normal(0, 0.02), biases
  zero, LayerNorm 1/0, and the two residual projections of each block (attention output and MLP
  output) normal(0, 0.02 / sqrt(2 * layers)).
* No dropout (the comparison with PyTorch runs both from identical weights and must be exact
  up to float rounding).
* ``compute_dtype``: float32, or float16/bfloat16 for the matmuls (weights stay float32 -- the
  master copy -- and are cast in the forward pass; LayerNorm, softmax and the loss are float32).

Linear layers hold their weight as (in, out) and compute ``x @ W + b``, the layout of GPT-2's
``Conv1D``; ``benchmarks/vs_pytorch/pytorch_gpt_lm.py`` uses the same layout and the same parameter names,
so ``--save-init`` / ``--init-weights`` move weights between the two by name.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from examples.gpt_lm.data import EMBED_ROWS, PAD, VOCAB, count_params, gpt2_init, gpt_param_shapes  # noqa: F401


class Linear(nn.Cell):
    """y = x @ W + b with W of shape (in, out); matmul in ``compute_dtype``."""

    def __init__(self, d_in, d_out, compute_dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(Tensor(np.zeros((d_in, d_out), np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros((d_out,), np.float32)), name="bias")
        self.cdt = compute_dtype

    def construct(self, x):
        shape = x.shape
        y = ops.matmul(ops.reshape(ops.cast(x, self.cdt), (-1, shape[-1])), ops.cast(self.weight, self.cdt))
        y = y + ops.cast(self.bias, self.cdt)
        return ops.reshape(y, shape[:-1] + (y.shape[-1],))


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis in float32 (eps 1e-5, as torch.nn.LayerNorm), output float32."""

    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = Parameter(Tensor(np.ones((d,), np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros((d,), np.float32)), name="bias")
        self.eps = eps

    def construct(self, x):
        x = ops.cast(x, ms.float32)
        mean = x.mean(-1, keep_dims=True)
        xc = x - mean
        var = (xc * xc).mean(-1, keep_dims=True)
        return xc * ops.rsqrt(var + self.eps) * self.weight + self.bias


class CausalSelfAttention(nn.Cell):
    def __init__(self, d_model, heads, max_positions, compute_dtype):
        super().__init__()
        self.h, self.hd = heads, d_model // heads
        self.c_attn = Linear(d_model, 3 * d_model, compute_dtype)
        self.c_proj = Linear(d_model, d_model, compute_dtype)
        self.scale = 1.0 / math.sqrt(self.hd)
        # additive mask: 0 on and below the diagonal, -1e9 above (float32: softmax runs in float32)
        mask = np.triu(np.full((max_positions, max_positions), -1e9, np.float32), k=1)
        self.mask = Tensor(mask)
        self.cdt = compute_dtype

    def construct(self, x):
        b, t, d = x.shape
        qkv = self.c_attn(x)  # (b, t, 3d)
        qkv = ops.transpose(ops.reshape(qkv, (b, t, 3, self.h, self.hd)), (2, 0, 3, 1, 4))  # (3, b, h, t, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = ops.BatchMatMul(transpose_b=True)(q, k)  # (b, h, t, t)
        att = ops.cast(att, ms.float32) * self.scale + self.mask[:t, :t]
        att = ops.softmax(att, -1)
        y = ops.BatchMatMul()(ops.cast(att, self.cdt), ops.cast(v, self.cdt))  # (b, h, t, hd)
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (b, t, d))
        return self.c_proj(y)


class MLP(nn.Cell):
    def __init__(self, d_model, compute_dtype):
        super().__init__()
        self.c_fc = Linear(d_model, 4 * d_model, compute_dtype)
        self.c_proj = Linear(4 * d_model, d_model, compute_dtype)
        self.gelu = ops.GeLU()  # tanh approximation, as GPT-2 (torch: approximate="tanh")

    def construct(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Cell):
    def __init__(self, d_model, heads, max_positions, compute_dtype):
        super().__init__()
        self.ln_1 = LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, max_positions, compute_dtype)
        self.ln_2 = LayerNorm(d_model)
        self.mlp = MLP(d_model, compute_dtype)

    def construct(self, x):
        x = x + ops.cast(self.attn(self.ln_1(x)), ms.float32)  # residual stream in float32
        return x + ops.cast(self.mlp(self.ln_2(x)), ms.float32)


class GPT(nn.Cell):
    """Decoder-only transformer: ``net(tokens)`` with int32 tokens (b, t), t <= max_positions,
    returns float32 logits (b, t, 256)."""

    def __init__(self, layers=4, d_model=256, heads=4, max_positions=512, compute_dtype=ms.float32, seed=0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"--d-model {d_model} is not divisible by --heads {heads}")
        self.layers, self.d_model, self.heads, self.max_positions = layers, d_model, heads, max_positions
        self.wte = Parameter(Tensor(np.zeros((EMBED_ROWS, d_model), np.float32)), name="wte")
        self.wpe = Parameter(Tensor(np.zeros((max_positions, d_model), np.float32)), name="wpe")
        self.h = nn.CellList([Block(d_model, heads, max_positions, compute_dtype) for _ in range(layers)])
        self.ln_f = LayerNorm(d_model)
        self.cdt = compute_dtype
        self.load_arrays(gpt2_init(layers, d_model, max_positions, seed))

    # -- weights by name (the .npz exchange with the PyTorch twin)
    def named_weights(self):
        return {p.name: p for p in self.get_parameters()}

    def load_arrays(self, arrays):
        params = self.named_weights()
        want = gpt_param_shapes(self.layers, self.d_model, self.max_positions)
        if set(params) != set(want):
            raise RuntimeError(f"parameter names differ from gpt_param_shapes: {sorted(set(params) ^ set(want))[:6]}")
        for name, p in params.items():
            a = np.asarray(arrays[name], np.float32)
            if a.shape != tuple(p.shape):
                raise ValueError(f"{name}: shape {a.shape}, the model has {tuple(p.shape)}")
            p.set_data(Tensor(a.copy()))

    def arrays(self):
        return {name: p.asnumpy().copy() for name, p in self.named_weights().items()}

    def construct(self, tokens):
        t = tokens.shape[1]
        x = ops.gather(self.wte, tokens, 0) + self.wpe[:t]  # (b, t, d) float32
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        b = x.shape[0]
        head = ops.cast(self.wte[:VOCAB], self.cdt)  # tied: the 256 byte rows
        logits = ops.matmul(ops.reshape(ops.cast(x, self.cdt), (b * t, self.d_model)), ops.transpose(head, (1, 0)))
        return ops.reshape(ops.cast(logits, ms.float32), (b, t, VOCAB))


class LMLoss(nn.Cell):
    """Network + summed cross entropy over the real targets.

    ``construct(x, y)`` returns ``(loss_sum, num_items)``: the cross entropy (nats) summed over
    the positions whose target is not ``PAD``, and the number of those positions (int32 scalar).
    ``GradAccumCell`` divides the window's summed gradient by the window's summed count (token-exact
    accumulation) and returns ``loss_sum / num_items`` per micro-batch.
    """

    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x, y):
        logits = self.net(x)  # (b, t, 256) float32
        logp = ops.log_softmax(logits, -1)
        real = ops.not_equal(y, PAD)
        target = ops.select(real, y, ops.zeros_like(y))
        nll = -ops.gather_elements(logp, 2, ops.expand_dims(target, -1)).squeeze(-1)
        loss_sum = (nll * ops.cast(real, ms.float32)).sum()
        num_items = ops.cast(ops.cast(real, ms.float32).sum(), ms.int32)  # exact below 2**24 tokens
        return loss_sum, num_items


class TokenMeanLoss(nn.Cell):
    """An ``LMLoss`` as one scalar: ``loss_sum / num_items``, the token mean of this batch. What a
    plain training step (or a mean-of-micro-batch-means accumulator) trains on."""

    def __init__(self, lm_loss):
        super().__init__(auto_prefix=False)
        self.lm_loss = lm_loss

    def construct(self, x, y):
        loss_sum, num_items = self.lm_loss(x, y)
        return loss_sum / ops.cast(num_items, ms.float32)
