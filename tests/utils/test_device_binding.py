"""Device binding under RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the GPUs a vLLM engine's workers
see, and the device index the CUDA IPC receiver maps, come from Ray's accelerator ids, not device 0."""

import pytest

from selfsteer.utils.runtime import gpu_index, visible_devices


@pytest.mark.parametrize("assigned, visible, pinned", [
    ([], None, None),  # no GPU: nothing to set
    (["3"], "3", None),  # Ray set it already (the default)
    (["3"], None, "3"),  # NOSET, nothing set by the user: every GPU visible, pin Ray's id
    (["3"], "0,1,2,3", "3"),  # NOSET with all GPUs listed
    ([2, 5], None, "2,5"),  # a tensor-parallel engine with two GPUs
])
def test_visible_devices_follow_rays_ids(assigned, visible, pinned):
    assert visible_devices(assigned, visible) == pinned


def test_visible_devices_refuses_a_gpu_the_user_hid():
    with pytest.raises(RuntimeError, match="Ray assigned GPU 4.*'0,1'"):
        visible_devices(["4"], "0,1")


def test_ipc_receiver_index_under_noset_is_the_assigned_gpu_not_zero():
    assert gpu_index(["3"], None) == 3  # NOSET: every GPU visible, device index = Ray's id
    assert gpu_index(["3"], visible_devices(["3"], None)) == 0  # after pinning: the one visible GPU
