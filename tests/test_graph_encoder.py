import pytest
import torch

from softarm.graph_encoder import GraphEncoder


def test_shapes_and_finite_outputs() -> None:
    enc = GraphEncoder(width=32, depth=2, num_heads=4)
    out = enc(torch.randn(3, 10, 19))
    assert out.tokens.shape == (3, 10, 32)
    assert out.embedding.shape == (3, 32)
    assert torch.isfinite(out.tokens).all()
    assert torch.isfinite(out.embedding).all()


def test_without_readout_there_is_no_embedding() -> None:
    enc = GraphEncoder(width=16, depth=1, num_heads=2, embedding_dim=None)
    assert enc(torch.randn(1, 10, 19)).embedding is None
    assert enc.readout is None


def test_each_sample_is_encoded_independently() -> None:
    enc = GraphEncoder(width=32, depth=2, num_heads=4)
    nodes = torch.randn(4, 10, 19)
    together = enc(nodes).embedding
    alone = torch.cat([enc(nodes[i : i + 1]).embedding for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


def test_hop_bias_prior_is_local_and_per_head() -> None:
    enc = GraphEncoder(width=32, depth=2, num_heads=4)
    bias = enc.hop_bias[0]  # [heads, hops]
    assert bias.shape == (4, 11)
    assert torch.all(bias[:, 0] == 0)
    assert torch.all(bias[:, 1:] < bias[:, :-1])  # farther nodes start with less attention
    torch.testing.assert_close(bias[:, 1], -(2.0 ** -torch.arange(1, 5)))
    assert enc.hops[0, 9] == 9


def test_topology_changes_the_encoding() -> None:
    nodes = torch.randn(2, 10, 19)
    torch.manual_seed(0)
    chain = GraphEncoder(width=32, depth=2, num_heads=4)
    torch.manual_seed(0)
    star = GraphEncoder(width=32, depth=2, num_heads=4, edges=[(0, i) for i in range(1, 10)])
    assert star.hops[1, 9] == 2
    assert not torch.allclose(chain(nodes).embedding, star(nodes).embedding)


def test_gradients_reach_every_parameter() -> None:
    enc = GraphEncoder(width=32, depth=2, num_heads=4)
    out = enc(torch.randn(2, 10, 19))
    (out.embedding.sum() + out.tokens.sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (torch.randn(2, 9, 19), r"shape \[batch, 10 nodes, 19 features\], got \[2, 9, 19\]"),
        (torch.randn(10, 19), r"got \[10, 19\]"),
        (torch.randn(2, 10, 18), r"got \[2, 10, 18\]"),
        (torch.zeros(2, 10, 19, dtype=torch.int64), r"floating-point tensor, got torch.int64"),
    ],
)
def test_bad_shapes_and_dtypes_are_rejected(nodes, message) -> None:
    with pytest.raises(ValueError, match=message):
        GraphEncoder(width=16, depth=1, num_heads=2)(nodes)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_located(bad) -> None:
    nodes = torch.zeros(2, 10, 19)
    nodes[1, 4, 7] = bad
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at batch 1, node 4, feature 7\)"):
        GraphEncoder(width=16, depth=1, num_heads=2)(nodes)


def test_validated_inputs_skip_the_finite_check_but_not_the_shape_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from softarm.model import PI0GraphPytorch
    from softarm.model_config import preset

    model = PI0GraphPytorch(preset("tiny")).trust_validated_inputs()
    encoder = model.graph_encoder
    assert encoder.check_finite is False
    nodes = torch.zeros(2, 10, 19)
    nodes[1, 4, 7] = float("nan")
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda _: pytest.fail("host sync in the graph encoder"))
    embedding = encoder(nodes).embedding  # no check, so no read-back to the host
    monkeypatch.undo()
    assert torch.isnan(embedding[1]).all()
    assert torch.isfinite(embedding[0]).all()
    with pytest.raises(ValueError, match=r"got \[2, 10, 18\]"):
        encoder(torch.zeros(2, 10, 18))


def test_width_must_divide_into_heads() -> None:
    with pytest.raises(ValueError, match="width 30 must be divisible by its 4 heads"):
        GraphEncoder(width=30, num_heads=4)
