"""cowest.dropout: the sparse LoRA dropout has nn.Dropout's distribution and replaces only LoRA dropouts."""

import pytest
import torch

from cowest.dropout import SPARSE_MAX_P, SparseDropout, dropped_positions, use_sparse_dropout


def test_dropped_positions_are_independent_bernoulli_trials():
    g = torch.Generator().manual_seed(0)
    n, p = 2_000_000, 0.05
    pos = dropped_positions(n, p, generator=g)
    assert pos.dtype == torch.long and int(pos.min()) >= 0 and int(pos.max()) < n
    assert bool((pos[1:] > pos[:-1]).all())  # increasing, no repeats
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(len(pos) - n * p) < 5 * sd
    mask = torch.zeros(n)
    mask[pos] = 1
    # neighbours independent: both dropped at rate p^2; the two halves dropped alike
    both = float((mask[1:] * mask[:-1]).sum())
    assert abs(both - (n - 1) * p * p) < 5 * ((n - 1) * p * p) ** 0.5
    half = n // 2
    assert abs(float(mask[:half].sum()) - float(mask[half:].sum())) < 5 * (2 * half * p) ** 0.5
    # the same generator state gives the same positions
    assert torch.equal(dropped_positions(1000, 0.1, torch.Generator().manual_seed(3)),
                       dropped_positions(1000, 0.1, torch.Generator().manual_seed(3)))
    # batches of draws that fall short of n are continued: the same distribution in batches of 2
    small = dropped_positions(n, p, torch.Generator().manual_seed(1), batch=2)
    assert abs(len(small) - n * p) < 5 * sd and bool((small[1:] > small[:-1]).all()) and int(small.max()) < n
    with pytest.raises(ValueError, match="p must be in"):
        dropped_positions(10, 0.0)


def test_sparse_dropout_scales_what_it_keeps_and_passes_gradients_through_the_mask():
    torch.manual_seed(0)
    d = SparseDropout(0.1)
    x = torch.randn(64, 300, requires_grad=True)
    y = d(x)
    kept = y != 0
    assert 0.05 < 1 - kept.float().mean().item() < 0.15
    assert torch.allclose(y[kept], x[kept] / 0.9)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.9)
    d.eval()
    assert d(x) is x  # eval mode: identity
    assert SparseDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        SparseDropout(1.0)


def test_sparse_dropout_uses_torch_above_its_threshold():
    torch.manual_seed(1)
    x = torch.ones(10_000)
    big = SparseDropout(SPARSE_MAX_P + 0.25)
    torch.manual_seed(1)
    ref = torch.nn.functional.dropout(x, big.p, training=True)
    torch.manual_seed(1)
    assert torch.equal(big(x), ref)


def test_use_sparse_dropout_swaps_only_lora_dropouts_with_p_above_0():
    class Layer(torch.nn.Module):
        def __init__(self, p):
            super().__init__()
            self.lora_dropout = torch.nn.ModuleDict({"default": torch.nn.Dropout(p),
                                                     "ref": torch.nn.Dropout(0.0)})
            self.other = torch.nn.Dropout(p)  # not LoRA's: left alone

    model = torch.nn.Sequential(Layer(0.05), Layer(0.05))
    assert use_sparse_dropout(model) == 2
    for layer in model:
        assert isinstance(layer.lora_dropout["default"], SparseDropout) and layer.lora_dropout["default"].p == 0.05
        assert type(layer.lora_dropout["ref"]) is torch.nn.Dropout and type(layer.other) is torch.nn.Dropout
    assert use_sparse_dropout(model) == 0
