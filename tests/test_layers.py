import pytest
import torch

from hfreg import DropPath, drop_path, drop_path_rates


class TestDropPath:
    def test_eval_and_zero_are_identity(self):
        x = torch.randn(8, 4, 3)
        assert drop_path(x, 0.5, training=False) is x
        assert drop_path(x, 0.0, training=True) is x

    def test_per_sample_mask_with_inverted_scaling(self):
        torch.manual_seed(0)
        x = torch.ones(4096, 3, 2)
        y = drop_path(x, 0.25, training=True)
        per_sample = y.flatten(1)
        # every example is either dropped whole or kept whole and scaled by 1/keep
        assert torch.allclose(per_sample.unique(), torch.tensor([0.0, 1 / 0.75]))
        assert (per_sample == per_sample[:, :1]).all()
        assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.03

    def test_folded_rows_share_their_example_draw(self):
        torch.manual_seed(1)
        x = torch.ones(6 * 5, 2)  # 6 examples x 5 windows folded into dim 0
        y = drop_path(x, 0.5, training=True, batch_size=6).view(6, -1)
        assert (y == y[:, :1]).all()

    def test_per_batch_drops_everything_or_nothing(self):
        torch.manual_seed(2)
        for _ in range(20):
            y = drop_path(torch.ones(16, 4), 0.5, training=True, mode="per_batch")
            assert len(y.unique()) == 1

    def test_module_extra_repr_and_eval(self):
        m = DropPath(0.1)
        assert "drop_prob=0.100" in repr(m)
        x = torch.randn(3, 2)
        assert torch.equal(m.eval()(x), x)

    @pytest.mark.parametrize("bad", [-0.1, 1.0, "0.1", None])
    def test_bad_rate(self, bad):
        with pytest.raises(ValueError, match="drop_prob"):
            DropPath(bad if bad is not None else float("nan"))


def test_rates_linear_and_uniform():
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.2, 3, "uniform") == [0.2, 0.2, 0.2]
    with pytest.raises(ValueError, match="`profile` must be one of"):
        drop_path_rates(0.2, 3, "cosine")


def test_the_drop_functions_refuse_what_would_give_nan_or_a_raw_error():
    from hfreg.layers import drop_head, embedding_noise

    x = torch.ones(2, 4)
    for call, message in [(lambda: drop_path(x, 1.0, True), "`drop_prob` must be a float in \\[0, 1\\)"),
                          (lambda: drop_path(x, 0.5, True, mode="per_token"), "`mode` must be one of"),
                          (lambda: drop_head(x, 1.0, 2, True), "`p` must be a float in \\[0, 1\\)"),
                          (lambda: drop_head(x, 0.5, 0, True), "`heads` must be an int >= 1, got 0"),
                          (lambda: embedding_noise(x, -5.0, True), "`alpha` must be a finite float >= 0")]:
        with pytest.raises(ValueError, match=message):
            call()
