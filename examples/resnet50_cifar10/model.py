"""ResNet50 for CIFAR-10, defined here because MindSpore has no ``nn.ResNet50``.

Bottleneck blocks [3, 4, 6, 3] with expansion 4 (ResNet v1.5: the stride sits on the 3x3
convolution of a block, as in torchvision), BatchNorm after every convolution, a 1x1
projection shortcut where shape changes, global average pooling and one Dense layer.

Two stems:

* ``"cifar"`` (default): one 3x3 stride-1 convolution and no max-pool. CIFAR images are
  32x32; the ImageNet stem (7x7 stride 2 + 3x3 max-pool stride 2) would shrink them to 8x8
  before the first residual stage and to 1x1 at the last stage, throwing away most spatial
  information and costing several points of accuracy. With the 3x3 stem the four stages see
  32x32, 16x16, 8x8 and 4x4 feature maps.
* ``"imagenet"``: the original 7x7/2 convolution + 3x3/2 max-pool, for comparison.

Two normalisations: ``norm="batch"`` (default, BatchNorm2d) and ``norm="group"`` (GroupNorm,
32 groups or one per channel below 32 channels; statistics per sample, so a batch of 128 and
4 accumulated micro-batches of 32 give the same gradient -- used by the batch-size study).
Both have the same parameters (scale and shift per channel) and the same names.

Initialisation matches torchvision with ``zero_init_residual=True``: He-normal (fan_out, ReLU)
convolution weights, normalisation scale 1 / shift 0 except the last scale of each bottleneck
(0, so every block starts as the identity), and MindSpore's default Dense init (which is
PyTorch's Linear init).

Parameter counts for 10 classes: 23,520,842 (cifar stem), 23,528,522 (imagenet stem).
This module only imports MindSpore when it is imported itself: import it after the
ONEDNN_MAX_CPU_ISA fix has been applied.
"""

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeNormal

STAGES = (3, 4, 6, 3)
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4

# Trainable parameters of everything except the final Dense layer, per stem; the Dense layer
# adds 2048 * num_classes + num_classes. Checked by expected_param_count() at start-up.
_TRUNK_PARAMS = {"cifar": 23_500_352, "imagenet": 23_508_032}


def expected_param_count(num_classes=10, stem="cifar"):
    return _TRUNK_PARAMS[stem] + (WIDTHS[-1] * EXPANSION + 1) * num_classes


def count_params(net):
    """Number of trainable scalars (BatchNorm moving statistics are not trainable)."""
    total = 0
    for p in net.trainable_params():
        n = 1
        for d in p.shape:
            n *= d
        total += n
    return total


def _conv(cin, cout, k, stride=1):
    pad = k // 2
    return nn.Conv2d(
        cin,
        cout,
        k,
        stride=stride,
        pad_mode="pad" if pad else "valid",
        padding=pad,
        has_bias=False,
        weight_init=HeNormal(mode="fan_out", nonlinearity="relu"),
    )


NORMS = ("batch", "group")


def _bn(c, gamma_init="ones", norm="batch"):
    """The one normalisation factory (attribute names stay ``bn*`` whatever the kind)."""
    if norm == "group":
        return nn.GroupNorm(min(32, c), c, eps=1e-5, gamma_init=gamma_init)
    # MindSpore momentum 0.9 == PyTorch momentum 0.1 (running = 0.9 * running + 0.1 * batch).
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.9, gamma_init=gamma_init)


class Bottleneck(nn.Cell):
    def __init__(self, cin, width, stride, norm="batch"):
        super().__init__()
        cout = width * EXPANSION
        self.conv1 = _conv(cin, width, 1)
        self.bn1 = _bn(width, norm=norm)
        self.conv2 = _conv(width, width, 3, stride)
        self.bn2 = _bn(width, norm=norm)
        self.conv3 = _conv(width, cout, 1)
        # Zero-initialised last BatchNorm scale (Goyal et al. 2017, torchvision's
        # zero_init_residual): each block starts as the identity. With gamma = 1 this ResNet50
        # diverges at batch 128 and lr 0.05 -- in MindSpore and, from identical weights, in
        # PyTorch alike (examples/README.md, "Results").
        self.bn3 = _bn(cout, gamma_init="zeros", norm=norm)
        self.relu = nn.ReLU()
        self.project = stride != 1 or cin != cout
        if self.project:
            self.down_conv = _conv(cin, cout, 1, stride)
            self.down_bn = _bn(cout, norm=norm)

    def construct(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x
        if self.project:
            identity = self.down_bn(self.down_conv(x))
        return self.relu(out + identity)


class ResNet50(nn.Cell):
    def __init__(self, num_classes=10, stem="cifar", norm="batch"):
        super().__init__()
        if stem not in _TRUNK_PARAMS:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', not {stem!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be 'batch' or 'group', not {norm!r}")
        self.stem_kind = stem
        self.norm = norm
        self.bn_folded = False
        if stem == "cifar":
            self.conv1 = _conv(3, 64, 3, 1)
        else:
            self.conv1 = _conv(3, 64, 7, 2)
        self.bn1 = _bn(64, norm=norm)
        self.relu = nn.ReLU()
        self.use_maxpool = stem == "imagenet"
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        layers = []
        cin = 64
        for i, (blocks, width) in enumerate(zip(STAGES, WIDTHS)):
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(Bottleneck(cin, width, stride, norm))
                cin = width * EXPANSION
        self.layers = nn.SequentialCell(layers)
        self.fc = nn.Dense(cin, num_classes)

    def construct(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.use_maxpool:
            x = self.maxpool(x)
        x = self.layers(x)
        x = ops.mean(x, (2, 3))
        return self.fc(x)


class _Shift(nn.Cell):
    """A per-channel shift (BiasAdd): what is left of an inference BatchNorm after its scale went into the conv."""

    def __init__(self, shift, name):
        super().__init__()
        self.shift = Parameter(Tensor(shift.astype(np.float32)), name=name, requires_grad=False)
        self.bias_add = ops.BiasAdd()

    def construct(self, x):
        return self.bias_add(x, self.shift)


def _fold(conv, bn):
    """Scales ``conv``'s weight by the inference BatchNorm ``bn``'s gamma / sqrt(var + eps); returns
    the shift beta - mean * gamma / sqrt(var + eps) that remains."""
    gamma, beta = bn.gamma.asnumpy().astype(np.float64), bn.beta.asnumpy().astype(np.float64)
    mean, var = bn.moving_mean.asnumpy().astype(np.float64), bn.moving_variance.asnumpy().astype(np.float64)
    scale = gamma / np.sqrt(var + bn.eps)
    w = conv.weight.asnumpy().astype(np.float64) * scale[:, None, None, None]
    conv.weight.set_data(Tensor(w.astype(np.float32)))
    return beta - mean * scale


def fold_batchnorm(net):
    """Folds every BatchNorm of a BatchNorm ``ResNet50`` into the preceding convolution, for evaluation.

    In eval mode a BatchNorm is a fixed per-channel affine map, so conv -> BN equals a conv with
    scaled weights followed by a shift; the two shifts that meet at a projection block's sum
    become one. The result computes the same logits up to float32 rounding and evaluates ~10 %
    faster on CPU (MindSpore runs BatchNorm, shift, ReLU and Add as separate memory-bound
    kernels). The network is changed in place, set to eval mode and returned; it can no longer
    be trained.
    """
    if getattr(net, "norm", "batch") != "batch":
        raise ValueError("fold_batchnorm: the network has no BatchNorm to fold (norm=%r)" % net.norm)
    if getattr(net, "bn_folded", False):
        raise ValueError("fold_batchnorm: this network's BatchNorm is already folded")
    net.set_train(False)
    net.bn1 = _Shift(_fold(net.conv1, net.bn1), "bn1.shift")
    for i, block in enumerate(net.layers):
        p = f"layers.{i}."
        block.bn1 = _Shift(_fold(block.conv1, block.bn1), p + "bn1.shift")
        block.bn2 = _Shift(_fold(block.conv2, block.bn2), p + "bn2.shift")
        shift = _fold(block.conv3, block.bn3)
        if block.project:
            shift = shift + _fold(block.down_conv, block.down_bn)
            block.down_bn = nn.Identity()
        block.bn3 = _Shift(shift, p + "bn3.shift")
    net.bn_folded = True
    return net
