"""Pruning methods: achieved sparsity, masks undo exactly, structure, determinism."""

import pytest
import torch
import torchvision
from torch import nn

from fairprune.zoo.archs import MLP, SmallCNN
from fairprune.core.errors import InputError
from fairprune.engine.prune import MaskedModel, compute_masks, get_method, list_methods, prunable_parameters

METHODS = [m.name for m in list_methods()]


def _models():
    torch.manual_seed(0)
    return [
        ("mlp", MLP(12, 3, hidden=(16, 8)).eval(), torch.randn(4, 12)),
        ("small_cnn", SmallCNN().eval(), torch.randn(4, 1, 28, 28)),
        ("resnet18", torchvision.models.resnet18(num_classes=10).eval(), torch.randn(2, 3, 32, 32)),
    ]


def test_prunable_parameters_are_conv_and_linear_weights_only():
    m = SmallCNN()
    names = list(prunable_parameters(m))
    assert names == ["features.0.weight", "features.4.weight", "classifier.1.weight", "classifier.3.weight"]


def test_registry_lists_the_four_methods_and_refuses_unknown():
    assert {"global_magnitude", "layer_magnitude", "random", "structured_l1"} <= set(METHODS)
    with pytest.raises(InputError, match="unknown pruning method 'magic'.*global_magnitude"):
        compute_masks(SmallCNN(), "magic", 0.5)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5])
def test_sparsity_out_of_range_refused(sparsity):
    if sparsity == 0.0:
        masks = compute_masks(SmallCNN(), "global_magnitude", 0.0)
        assert all(bool(m.all()) for m in masks.values())
        return
    with pytest.raises(InputError, match=r"sparsity must be a fraction in \[0, 1\)"):
        compute_masks(SmallCNN(), "global_magnitude", sparsity)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name,model,x", _models(), ids=lambda v: v if isinstance(v, str) else "")
def test_achieved_sparsity_and_exact_undo(method, name, model, x):
    names = list(prunable_parameters(model))
    dense_out = model(x).detach().clone()
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    mm = MaskedModel(model)
    fixed = get_method(method).fixed_sparsity
    for s in ((fixed,) if fixed is not None else (0.5, 0.9)):     # nm_2_4 is 0.5 by definition
        mm.apply(compute_masks(model, method, s, seed=0, example_input=x))
        achieved = mm.achieved_sparsity(names)
        tol = 0.01 if method != "structured_l1" else 0.03
        assert achieved == pytest.approx(s, abs=tol), (method, name, s, achieved)
        assert not torch.equal(model(x), dense_out)
        mm.restore()
    assert torch.equal(model(x), dense_out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, dense_state[k]), k


def test_global_magnitude_removes_exactly_the_smallest():
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, -5.0, 0.3, 2.0], [-0.2, 0.05, 4.0, -1.0]]))
    m = compute_masks(nn.Sequential(lin), "global_magnitude", 0.5)["0.weight"]
    # the four smallest |w|: 0.05, 0.1, 0.2, 0.3
    assert m.tolist() == [[False, True, False, True], [False, False, True, True]]


def test_layer_magnitude_prunes_each_layer_equally():
    m = MLP(10, 2, hidden=(20,))
    masks = compute_masks(m, "layer_magnitude", 0.5)
    for name, mask in masks.items():
        assert (~mask).sum().item() == round(0.5 * mask.numel()), name


def test_random_is_seeded():
    m = SmallCNN()
    a = compute_masks(m, "random", 0.7, seed=1)
    b = compute_masks(m, "random", 0.7, seed=1)
    c = compute_masks(m, "random", 0.7, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_structured_removes_whole_channels_with_bn_and_keeps_classifier():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    x = torch.randn(3, 1, 28, 28)
    masks = compute_masks(m, "structured_l1", 0.5, example_input=x)
    w = masks["features.0.weight"]
    removed = (~w.reshape(w.shape[0], -1)).all(1)
    assert removed.any()
    # whole rows only: a channel is either fully kept or fully removed
    assert ((~w.reshape(w.shape[0], -1)).any(1) == removed).all()
    for p in ("features.0.bias", "features.1.weight", "features.1.bias"):
        assert torch.equal(~masks[p], removed), p
    # next conv's input slice for the removed channels is gone too
    assert (~masks["features.4.weight"][:, removed]).all()
    # the classifier's outputs are never removed
    cls = masks["classifier.3.weight"]
    assert cls.reshape(cls.shape[0], -1).any(1).all()
    # removed channels really output zero after BN (bias and BN parameters masked)
    mm = MaskedModel(m)
    mm.apply(masks)
    act = m.features[2](m.features[1](m.features[0](x)))
    assert act[:, removed].abs().max() == 0


def test_structured_couples_residual_channels_in_resnet():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    masks = compute_masks(m, "structured_l1", 0.5, example_input=x)
    # the residual stream of layer1 is shared by conv1, layer1.0.conv2 and layer1.1.conv2:
    # the same output channels must be removed from all three
    rows = lambda n: (~masks[n]).reshape(masks[n].shape[0], -1).all(1)
    stem = rows("conv1.weight")
    assert stem.any()
    assert torch.equal(rows("layer1.0.conv2.weight"), stem)
    assert torch.equal(rows("layer1.1.conv2.weight"), stem)
    assert torch.equal(~masks["bn1.weight"], stem)


def test_selection_masks_equal_the_stable_sorts():
    """The CPU's selection-based masks remove exactly the first k of the stable ascending order (ties by position),
    as the sort does: with heavy ties, k = 0, several levels at once, NaN scores and other dtypes."""
    from fairprune.engine.prune._methods import _removed_first

    def by_sort(flat, k):
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[torch.sort(flat, stable=True).indices[:k]] = False
        return keep

    g = torch.Generator().manual_seed(0)
    cases = [torch.rand(1000, generator=g), torch.randint(0, 5, (1000,), generator=g).float(),   # heavy ties
             torch.randint(0, 3, (997,), generator=g).double(), torch.zeros(50),
             torch.rand(300, generator=g).to(torch.bfloat16)]
    nan = torch.rand(200, generator=g)
    nan[::7] = float("nan")
    cases.append(nan)
    for flat in cases:
        n = flat.numel()
        ks = [0, 1, n // 3, n // 2, n // 2, n - 1]
        for k, keep in zip(ks, _removed_first(flat, ks)):
            assert torch.equal(keep, by_sort(flat, k)), (flat.dtype, k)
            assert int((~keep).sum()) == k
