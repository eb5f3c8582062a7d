import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from softarm.train.ema import make_ema, pull_towards, trainable_copy, update_ema


def test_the_ema_copy_shares_frozen_weights_and_averages_the_rest_as_torch_does() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    model[0].requires_grad_(False)  # a frozen tower
    ema, reference = make_ema(model), AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=False)
    assert ema.module[0].weight is model[0].weight  # no second copy
    assert ema.module[0].bias is model[0].bias
    assert ema.module[1].weight is not model[1].weight
    assert torch.equal(ema.module[1].weight, model[1].weight)
    frozen = model[0].weight.clone()
    for _ in range(3):
        with torch.no_grad():
            model[1].weight.add_(torch.randn_like(model[1].weight))
        update_ema(ema, model, 0.9)
        reference.update_parameters(model)
    assert int(ema.n_averaged) == 3
    for ours, theirs in zip(ema.module.parameters(), reference.module.parameters(), strict=True):
        assert torch.allclose(ours, theirs, atol=1e-7)  # torch's AveragedModel over the whole model, the same values
    assert not torch.allclose(ema.module[1].weight, model[1].weight)  # it averages, it does not follow
    assert torch.equal(model[0].weight, frozen)


def test_the_anchor_pulls_what_trains_back_towards_the_start_and_leaves_the_frozen_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    anchor = trainable_copy(model)
    assert anchor[0].weight is model[0].weight  # frozen weights are not copied
    start = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
        model[0].weight.add_(1.0)  # a frozen weight changed by hand is not the anchor's to restore
    frozen = model[0].weight.detach().clone()
    pull_towards(model, anchor, 0.25)
    torch.testing.assert_close(model[1].weight, start + 0.75)  # w <- w - 0.25 (w - w0)
    assert torch.equal(model[0].weight, frozen)
    assert torch.equal(anchor[1].weight, start)  # the anchor never moves
    pull_towards(model, anchor, 1.0)
    assert torch.equal(model[1].weight, start)
