"""harness.hardware: the peak FLOP/s table's matching and the git state where git cannot answer."""
import subprocess

from harness import hardware


def test_peak_flops_matches_the_most_specific_name_first():
    assert hardware.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert hardware.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert hardware.peak_flops("NVIDIA GH200 480GB") == 989e12
    assert hardware.peak_flops("Tesla T4") is None and hardware.peak_flops(None) is None


def test_git_state_of_this_checkout_and_of_a_folder_outside_git(tmp_path):
    state = hardware.git_state()
    assert len(state["commit"]) == 40 and isinstance(state["dirty"], bool)
    assert hardware.git_state(tmp_path) == {"commit": None, "dirty": None}


def test_a_failing_git_status_leaves_dirty_unknown_not_clean(monkeypatch):
    real = subprocess.run

    def run(cmd, **kwargs):
        if "status" in cmd:
            return subprocess.CompletedProcess(cmd, 128, "", "fatal: index file corrupt")
        return real(cmd, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    state = hardware.git_state()
    assert len(state["commit"]) == 40 and state["dirty"] is None
