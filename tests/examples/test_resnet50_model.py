"""The example's ResNet50: parameter count, the two normalisations, zero-initialised last scale.

The GroupNorm variant exists for the batch-size study's equivalence panel: its statistics are
per sample, so a sample's output must not depend on the rest of the batch (BatchNorm's must).
"""

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn  # noqa: E402

from examples.resnet50_cifar10 import model as resnet50  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def pynative():
    ms.set_context(mode=ms.PYNATIVE_MODE)


def _params(net):
    return {p.name: tuple(p.shape) for p in net.trainable_params()}


@pytest.mark.parametrize("stem, expected", [("cifar", 23_520_842), ("imagenet", 23_528_522)])
def test_parameter_count_matches_torchvision_resnet50(stem, expected):
    # torchvision resnet50(num_classes=10) has 23,528,522 trainable scalars; the CIFAR stem's
    # 3x3 conv has 3*64*9 = 1,728 weights instead of 3*64*49 = 9,408.
    net = resnet50.ResNet50(num_classes=10, stem=stem)
    assert resnet50.count_params(net) == expected == resnet50.expected_param_count(10, stem)


def test_group_norm_variant_has_the_same_parameters():
    batch, group = resnet50.ResNet50(norm="batch"), resnet50.ResNet50(norm="group")
    assert _params(batch) == _params(group)
    norms = [c for _, c in group.cells_and_names() if isinstance(c, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len(norms) == 53 and all(isinstance(c, nn.GroupNorm) for c in norms)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_last_scale_of_each_block_starts_at_zero(norm):
    net = resnet50.ResNet50(norm=norm)
    gammas = {p.name: p.asnumpy() for p in net.trainable_params() if p.name.endswith("gamma")}
    last = [n for n in gammas if ".bn3." in n]
    assert len(last) == 16 and all(not gammas[n].any() for n in last)
    others = [n for n in gammas if n not in last]
    assert len(others) == 53 - 16 and all((gammas[n] == 1).all() for n in others)


@pytest.mark.parametrize("bad", [dict(norm="layer"), dict(stem="tiny")])
def test_bad_option_names_the_argument(bad):
    ((name, value),) = bad.items()
    with pytest.raises(ValueError, match=f"{name} must be .*{value}"):
        resnet50.ResNet50(**bad)


@pytest.mark.parametrize("norm, per_sample", [("group", True), ("batch", False)])
def test_only_group_norm_is_independent_of_the_rest_of_the_batch(norm, per_sample):
    ms.set_seed(3)
    net = resnet50.ResNet50(norm=norm)
    # every scale 1, so that all blocks (not only the shortcuts) shape the output
    for p in net.trainable_params():
        if p.name.endswith("gamma"):
            p.set_data(ms.Tensor(np.ones(p.shape, np.float32)))
    net.set_train(True)  # BatchNorm uses the batch's statistics
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    whole = net(ms.Tensor(x)).asnumpy()
    first_two = net(ms.Tensor(x[:2])).asnumpy()
    diff = float(np.abs(whole[:2] - first_two).max())
    scale = float(np.abs(whole).max())
    if per_sample:
        assert diff <= 1e-4 * scale, (diff, scale)
    else:
        assert diff > 1e-2 * scale, (diff, scale)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_folded_batchnorm_gives_the_same_eval_logits(stem):
    ms.set_seed(5)
    rng = np.random.default_rng(1)
    net = resnet50.ResNet50(stem=stem)
    # non-trivial statistics and affine parameters everywhere (fresh ones are 0/1)
    for p in net.get_parameters():
        leaf = p.name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "beta", "moving_mean"):
            p.set_data(ms.Tensor(rng.uniform(-1.0, 1.0, p.shape).astype(np.float32)))
        elif leaf == "moving_variance":
            p.set_data(ms.Tensor(rng.uniform(0.5, 2.0, p.shape).astype(np.float32)))
    net.set_train(False)
    x = ms.Tensor(rng.standard_normal((3, 3, 32, 32)).astype(np.float32))
    # float64 reference of the unfolded network is out of reach; the unfolded float32 network
    # is the reference, and the tolerance is float32 rounding over 50 layers
    expected = net(x).asnumpy()
    got = resnet50.fold_batchnorm(net)(x).asnumpy()
    assert not any(isinstance(c, nn.BatchNorm2d) for _, c in net.cells_and_names())
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_fold_batchnorm_refuses_what_it_cannot_fold():
    with pytest.raises(ValueError, match="no BatchNorm"):
        resnet50.fold_batchnorm(resnet50.ResNet50(norm="group"))
    net = resnet50.fold_batchnorm(resnet50.ResNet50())
    with pytest.raises(ValueError, match="already folded"):
        resnet50.fold_batchnorm(net)
