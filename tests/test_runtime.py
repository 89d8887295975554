"""flush_denormal: on inside (also nested), off after the outermost block."""
import torch

from spkid.runtime import flush_denormal


def _denormal_survives() -> bool:
    x = torch.tensor([1e-39], dtype=torch.float32)
    return bool((x * 1.0).item() != 0.0)


def test_nested_blocks_keep_flushing_until_the_outermost_ends():
    assert _denormal_survives()
    with flush_denormal():
        assert not _denormal_survives()
        with flush_denormal():
            assert not _denormal_survives()
        assert not _denormal_survives()          # the inner exit must not switch it off
    assert _denormal_survives()
