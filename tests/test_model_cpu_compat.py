"""pretrain.cpu_compat: megatron-core's CUDA assumptions redirected to the CPU, only without
CUDA, idempotently. The patched process is a spawned rank; this pytest process stays clean."""
import torch

from _dist_helpers import reference_run


def test_cuda_devices_and_rng_redirected_in_a_rank():
    c = reference_run()[0]["checks"]["compat"]
    assert c["again"] is True and c["wrapped_once"]
    assert set(c["devices"].values()) == {"cpu"}, c["devices"]
    assert c["stream_kept"] and c["forked_differs"]
    assert c["type_inside"] == "torch.cuda.FloatTensor" and c["type_after"] == "torch.FloatTensor"


def test_nothing_is_patched_when_cuda_is_present(monkeypatch):
    from pretrain import cpu_compat

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    zeros, current = torch.zeros, torch.cuda.current_device
    assert cpu_compat.apply_if_needed() is False
    assert torch.zeros is zeros and torch.cuda.current_device is current
    assert not cpu_compat.is_applied()


def test_pytest_process_stays_unpatched():
    """The model tests ran megatron in spawned ranks, never here."""
    assert not getattr(torch.zeros, "__cpu_compat__", False)
