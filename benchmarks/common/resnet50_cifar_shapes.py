"""The trainable parameters of ResNet50 for CIFAR-10, as (name, shape) pairs.

ResNet50 (bottleneck blocks [3, 4, 6, 3], widths 64/128/256/512, expansion 4) with the CIFAR
stem (a 3x3 convolution 3->64, stride 1, no max-pool) and a 10-class dense head. Convolutions
have no bias; every BatchNorm contributes gamma and beta (its moving mean/variance are not
trainable and are not part of gradient accumulation); the dense layer has weight and bias.
Order: the stem, then each block as conv1/bn1, conv2/bn2, conv3/bn3 and (first block of a
stage) the 1x1 projection shortcut, then the head.

161 tensors, 23,520,842 float32 values (= torchvision's ResNet50 count 25,557,032 with the
7x7 stem, 9,408, replaced by 1,728 and the 1000-class head, 2,049,000, replaced by 20,490).
`derive_shapes()` rebuilds the list from the architecture and is checked against the literal.
"""

from __future__ import annotations

import math

NUM_TENSORS = 161
NUM_VALUES = 23_520_842

RESNET50_CIFAR_SHAPES: list[tuple[str, tuple[int, ...]]] = [
    ("conv1.weight", (64, 3, 3, 3)),
    ("bn1.gamma", (64,)),
    ("bn1.beta", (64,)),
    ("layer1.0.conv1.weight", (64, 64, 1, 1)),
    ("layer1.0.bn1.gamma", (64,)),
    ("layer1.0.bn1.beta", (64,)),
    ("layer1.0.conv2.weight", (64, 64, 3, 3)),
    ("layer1.0.bn2.gamma", (64,)),
    ("layer1.0.bn2.beta", (64,)),
    ("layer1.0.conv3.weight", (256, 64, 1, 1)),
    ("layer1.0.bn3.gamma", (256,)),
    ("layer1.0.bn3.beta", (256,)),
    ("layer1.0.downsample.0.weight", (256, 64, 1, 1)),
    ("layer1.0.downsample.1.gamma", (256,)),
    ("layer1.0.downsample.1.beta", (256,)),
    ("layer1.1.conv1.weight", (64, 256, 1, 1)),
    ("layer1.1.bn1.gamma", (64,)),
    ("layer1.1.bn1.beta", (64,)),
    ("layer1.1.conv2.weight", (64, 64, 3, 3)),
    ("layer1.1.bn2.gamma", (64,)),
    ("layer1.1.bn2.beta", (64,)),
    ("layer1.1.conv3.weight", (256, 64, 1, 1)),
    ("layer1.1.bn3.gamma", (256,)),
    ("layer1.1.bn3.beta", (256,)),
    ("layer1.2.conv1.weight", (64, 256, 1, 1)),
    ("layer1.2.bn1.gamma", (64,)),
    ("layer1.2.bn1.beta", (64,)),
    ("layer1.2.conv2.weight", (64, 64, 3, 3)),
    ("layer1.2.bn2.gamma", (64,)),
    ("layer1.2.bn2.beta", (64,)),
    ("layer1.2.conv3.weight", (256, 64, 1, 1)),
    ("layer1.2.bn3.gamma", (256,)),
    ("layer1.2.bn3.beta", (256,)),
    ("layer2.0.conv1.weight", (128, 256, 1, 1)),
    ("layer2.0.bn1.gamma", (128,)),
    ("layer2.0.bn1.beta", (128,)),
    ("layer2.0.conv2.weight", (128, 128, 3, 3)),
    ("layer2.0.bn2.gamma", (128,)),
    ("layer2.0.bn2.beta", (128,)),
    ("layer2.0.conv3.weight", (512, 128, 1, 1)),
    ("layer2.0.bn3.gamma", (512,)),
    ("layer2.0.bn3.beta", (512,)),
    ("layer2.0.downsample.0.weight", (512, 256, 1, 1)),
    ("layer2.0.downsample.1.gamma", (512,)),
    ("layer2.0.downsample.1.beta", (512,)),
    ("layer2.1.conv1.weight", (128, 512, 1, 1)),
    ("layer2.1.bn1.gamma", (128,)),
    ("layer2.1.bn1.beta", (128,)),
    ("layer2.1.conv2.weight", (128, 128, 3, 3)),
    ("layer2.1.bn2.gamma", (128,)),
    ("layer2.1.bn2.beta", (128,)),
    ("layer2.1.conv3.weight", (512, 128, 1, 1)),
    ("layer2.1.bn3.gamma", (512,)),
    ("layer2.1.bn3.beta", (512,)),
    ("layer2.2.conv1.weight", (128, 512, 1, 1)),
    ("layer2.2.bn1.gamma", (128,)),
    ("layer2.2.bn1.beta", (128,)),
    ("layer2.2.conv2.weight", (128, 128, 3, 3)),
    ("layer2.2.bn2.gamma", (128,)),
    ("layer2.2.bn2.beta", (128,)),
    ("layer2.2.conv3.weight", (512, 128, 1, 1)),
    ("layer2.2.bn3.gamma", (512,)),
    ("layer2.2.bn3.beta", (512,)),
    ("layer2.3.conv1.weight", (128, 512, 1, 1)),
    ("layer2.3.bn1.gamma", (128,)),
    ("layer2.3.bn1.beta", (128,)),
    ("layer2.3.conv2.weight", (128, 128, 3, 3)),
    ("layer2.3.bn2.gamma", (128,)),
    ("layer2.3.bn2.beta", (128,)),
    ("layer2.3.conv3.weight", (512, 128, 1, 1)),
    ("layer2.3.bn3.gamma", (512,)),
    ("layer2.3.bn3.beta", (512,)),
    ("layer3.0.conv1.weight", (256, 512, 1, 1)),
    ("layer3.0.bn1.gamma", (256,)),
    ("layer3.0.bn1.beta", (256,)),
    ("layer3.0.conv2.weight", (256, 256, 3, 3)),
    ("layer3.0.bn2.gamma", (256,)),
    ("layer3.0.bn2.beta", (256,)),
    ("layer3.0.conv3.weight", (1024, 256, 1, 1)),
    ("layer3.0.bn3.gamma", (1024,)),
    ("layer3.0.bn3.beta", (1024,)),
    ("layer3.0.downsample.0.weight", (1024, 512, 1, 1)),
    ("layer3.0.downsample.1.gamma", (1024,)),
    ("layer3.0.downsample.1.beta", (1024,)),
    ("layer3.1.conv1.weight", (256, 1024, 1, 1)),
    ("layer3.1.bn1.gamma", (256,)),
    ("layer3.1.bn1.beta", (256,)),
    ("layer3.1.conv2.weight", (256, 256, 3, 3)),
    ("layer3.1.bn2.gamma", (256,)),
    ("layer3.1.bn2.beta", (256,)),
    ("layer3.1.conv3.weight", (1024, 256, 1, 1)),
    ("layer3.1.bn3.gamma", (1024,)),
    ("layer3.1.bn3.beta", (1024,)),
    ("layer3.2.conv1.weight", (256, 1024, 1, 1)),
    ("layer3.2.bn1.gamma", (256,)),
    ("layer3.2.bn1.beta", (256,)),
    ("layer3.2.conv2.weight", (256, 256, 3, 3)),
    ("layer3.2.bn2.gamma", (256,)),
    ("layer3.2.bn2.beta", (256,)),
    ("layer3.2.conv3.weight", (1024, 256, 1, 1)),
    ("layer3.2.bn3.gamma", (1024,)),
    ("layer3.2.bn3.beta", (1024,)),
    ("layer3.3.conv1.weight", (256, 1024, 1, 1)),
    ("layer3.3.bn1.gamma", (256,)),
    ("layer3.3.bn1.beta", (256,)),
    ("layer3.3.conv2.weight", (256, 256, 3, 3)),
    ("layer3.3.bn2.gamma", (256,)),
    ("layer3.3.bn2.beta", (256,)),
    ("layer3.3.conv3.weight", (1024, 256, 1, 1)),
    ("layer3.3.bn3.gamma", (1024,)),
    ("layer3.3.bn3.beta", (1024,)),
    ("layer3.4.conv1.weight", (256, 1024, 1, 1)),
    ("layer3.4.bn1.gamma", (256,)),
    ("layer3.4.bn1.beta", (256,)),
    ("layer3.4.conv2.weight", (256, 256, 3, 3)),
    ("layer3.4.bn2.gamma", (256,)),
    ("layer3.4.bn2.beta", (256,)),
    ("layer3.4.conv3.weight", (1024, 256, 1, 1)),
    ("layer3.4.bn3.gamma", (1024,)),
    ("layer3.4.bn3.beta", (1024,)),
    ("layer3.5.conv1.weight", (256, 1024, 1, 1)),
    ("layer3.5.bn1.gamma", (256,)),
    ("layer3.5.bn1.beta", (256,)),
    ("layer3.5.conv2.weight", (256, 256, 3, 3)),
    ("layer3.5.bn2.gamma", (256,)),
    ("layer3.5.bn2.beta", (256,)),
    ("layer3.5.conv3.weight", (1024, 256, 1, 1)),
    ("layer3.5.bn3.gamma", (1024,)),
    ("layer3.5.bn3.beta", (1024,)),
    ("layer4.0.conv1.weight", (512, 1024, 1, 1)),
    ("layer4.0.bn1.gamma", (512,)),
    ("layer4.0.bn1.beta", (512,)),
    ("layer4.0.conv2.weight", (512, 512, 3, 3)),
    ("layer4.0.bn2.gamma", (512,)),
    ("layer4.0.bn2.beta", (512,)),
    ("layer4.0.conv3.weight", (2048, 512, 1, 1)),
    ("layer4.0.bn3.gamma", (2048,)),
    ("layer4.0.bn3.beta", (2048,)),
    ("layer4.0.downsample.0.weight", (2048, 1024, 1, 1)),
    ("layer4.0.downsample.1.gamma", (2048,)),
    ("layer4.0.downsample.1.beta", (2048,)),
    ("layer4.1.conv1.weight", (512, 2048, 1, 1)),
    ("layer4.1.bn1.gamma", (512,)),
    ("layer4.1.bn1.beta", (512,)),
    ("layer4.1.conv2.weight", (512, 512, 3, 3)),
    ("layer4.1.bn2.gamma", (512,)),
    ("layer4.1.bn2.beta", (512,)),
    ("layer4.1.conv3.weight", (2048, 512, 1, 1)),
    ("layer4.1.bn3.gamma", (2048,)),
    ("layer4.1.bn3.beta", (2048,)),
    ("layer4.2.conv1.weight", (512, 2048, 1, 1)),
    ("layer4.2.bn1.gamma", (512,)),
    ("layer4.2.bn1.beta", (512,)),
    ("layer4.2.conv2.weight", (512, 512, 3, 3)),
    ("layer4.2.bn2.gamma", (512,)),
    ("layer4.2.bn2.beta", (512,)),
    ("layer4.2.conv3.weight", (2048, 512, 1, 1)),
    ("layer4.2.bn3.gamma", (2048,)),
    ("layer4.2.bn3.beta", (2048,)),
    ("fc.weight", (10, 2048)),
    ("fc.bias", (10,)),
]


def derive_shapes(blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), expansion=4, num_classes=10):
    """The same list, built from the architecture (a cross-check of the literal above)."""
    shapes = [("conv1.weight", (64, 3, 3, 3)), ("bn1.gamma", (64,)), ("bn1.beta", (64,))]
    cin = 64
    for stage, (count, width) in enumerate(zip(blocks, widths), 1):
        for b in range(count):
            p = f"layer{stage}.{b}."
            cout = width * expansion
            shapes += [
                (p + "conv1.weight", (width, cin, 1, 1)),
                (p + "bn1.gamma", (width,)),
                (p + "bn1.beta", (width,)),
                (p + "conv2.weight", (width, width, 3, 3)),
                (p + "bn2.gamma", (width,)),
                (p + "bn2.beta", (width,)),
                (p + "conv3.weight", (cout, width, 1, 1)),
                (p + "bn3.gamma", (cout,)),
                (p + "bn3.beta", (cout,)),
            ]
            if b == 0:
                shapes += [
                    (p + "downsample.0.weight", (cout, cin, 1, 1)),
                    (p + "downsample.1.gamma", (cout,)),
                    (p + "downsample.1.beta", (cout,)),
                ]
            cin = cout
    shapes += [("fc.weight", (num_classes, cin)), ("fc.bias", (num_classes,))]
    return shapes


def check_shapes(shapes=None):
    shapes = RESNET50_CIFAR_SHAPES if shapes is None else shapes
    total = sum(math.prod(s) for _, s in shapes)
    assert len(shapes) == NUM_TENSORS, f"{len(shapes)} tensors, expected {NUM_TENSORS}"
    assert total == NUM_VALUES, f"{total} values, expected {NUM_VALUES}"
    assert shapes == derive_shapes(), "literal shape list differs from the derived ResNet50-CIFAR list"
    return total


check_shapes()
