"""optim.py: Muon, ShardedAdam and GradSync on one process and on two (gloo, under torchrun), against their
references: Newton-Schulz's on the mean gradient, and torch.optim.Adam's on the mean gradient, bit for bit."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from helpers import ADAM_PARAMS, adam_grads, adam_groups, adam_params, run_two_processes
from kernels.newton_schulz import newton_schulz_ref
from optim import Muon, ShardedAdam

REPO = Path(__file__).resolve().parent.parent
SHAPES = [(16, 32)] * 5 + [(32, 16)] * 3 + [(3, 8, 16)]  # Muon's: (32, 16) joins (16, 32), transposed


def fill(template: str, tmp_path: Path) -> str:
    """A script template with the repository, the output folder and SHAPES filled in."""
    return template.format(repo=str(REPO), out=str(tmp_path), shapes=SHAPES)


# ---------------------------------------------------------------------------------------------- Muon


def _muon(params, world_size=1, calls=None):
    def newton_schulz(G, steps):
        if calls is not None:
            calls.append(G.size(0))
        return newton_schulz_ref(G, steps)

    return Muon(params, lr=0.1, momentum=0.95, weight_decay=0.0, ns_steps=5, newton_schulz=newton_schulz,
                world_size=world_size)


@pytest.mark.parametrize("shape", [(64, 32), (32, 96), (3, 24, 48)])
def test_muon_update_is_orthogonal(shape):
    p = torch.nn.Parameter(torch.randn(shape))
    before = p.detach().clone()
    p.grad = torch.randn(shape)
    _muon([p]).step()
    scale = max(1, shape[-2] / shape[-1]) ** 0.5
    update = (before - p.detach()) / (0.1 * scale)
    sv = torch.linalg.svdvals(update.reshape(-1, *shape[-2:]))
    assert sv.min() > 0.5 and sv.max() < 1.5, f"singular values in [{sv.min():.3f}, {sv.max():.3f}]"


def test_muon_weight_decay_is_decoupled_and_before_the_update():
    """p <- p (1 - lr wd) - lr update: one step with decay and one without, from the same parameters and
    gradients, differ by lr wd p."""
    start = [torch.randn(16, 32), torch.randn(3, 8, 16)]
    grads = [torch.randn(p.shape) for p in start]
    after = {}
    for wd in (0.0, 0.5):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        Muon(params, lr=0.1, momentum=0.95, weight_decay=wd, ns_steps=5, newton_schulz=newton_schulz_ref).step()
        after[wd] = [p.detach() for p in params]
    for i, (p0, p1) in enumerate(zip(after[0.0], after[0.5])):
        torch.testing.assert_close(p1, p0 - 0.1 * 0.5 * start[i], msg=lambda m: f"parameter {i}: {m}")


DIST_MUON = """
import sys, torch, torch.distributed as dist
sys.path.insert(0, {repo!r})
from optim import Muon
from kernels.newton_schulz import newton_schulz_ref
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
params = [torch.nn.Parameter(torch.randn(s)) for s in {shapes}]
calls = []

def newton_schulz(G, steps):
    calls.append(G.size(0))
    return newton_schulz_ref(G, steps)

muon = Muon(params, lr=0.1, momentum=0.95, weight_decay=0.0, ns_steps=5, newton_schulz=newton_schulz, world_size=world)
for step in range(3):
    g = torch.Generator().manual_seed(100 * step + rank)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    muon.step()
torch.save(dict(params=[p.detach() for p in params], calls=calls), f"{out}/rank{{rank}}.pt")
dist.barrier()  # both ranks finish before either tears gloo down: one alone can abort (SIGABRT) under load
dist.destroy_process_group()
"""


def test_distributed_muon_equals_single_process(tmp_path):
    run_two_processes(fill(DIST_MUON, tmp_path), tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    calls = []
    muon = _muon(params, calls=calls)
    for step in range(3):
        gens = [torch.Generator().manual_seed(100 * step + r) for r in range(2)]
        for p in params:
            p.grad = sum(torch.randn(p.shape, generator=g) for g in gens) / 2  # what the reduce-scatter averages
        muon.step()
    for r in range(2):
        for got, want in zip(ranks[r]["params"], params):
            torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)
    # each rank orthogonalised only its share: 8 (16, 32) matrices -> 4 per rank; the 3 stacked (8, 16) -> 2 (padded)
    assert ranks[0]["calls"] == ranks[1]["calls"] == [4, 2] * 3
    assert calls == [8, 3] * 3


# ---------------------------------------------------------------------------------------------- ShardedAdam


def make_adam(params: list, world_size: int = 1, rank: int = 0) -> ShardedAdam:
    groups, sharded = adam_groups(params)
    return ShardedAdam(groups, sharded=sharded, world_size=world_size, rank=rank, betas=(0.8, 0.95), eps=1e-10,
                       fused=True)


def adam_reference(steps: int, ranks: int) -> list[list[torch.Tensor]]:
    """torch.optim.Adam over fp32 copies of the parameters, on the mean over the ranks of each rank's gradient
    accumulated over two micro-steps (in the parameter's dtype, as autograd accumulates it); after every step,
    each parameter is its copy in its own dtype."""
    params = adam_params()
    copies = [torch.nn.Parameter(p.detach().float()) for p in params]
    groups, _ = adam_groups(copies)
    adam = torch.optim.Adam(groups, betas=(0.8, 0.95), eps=1e-10, fused=True)
    after = []
    for step in range(steps):
        for i, c in enumerate(copies):
            per_rank = [adam_grads(params, r, step, 0)[i] for r in range(ranks)]
            if per_rank[0] is not None:
                c.grad = sum((g + adam_grads(params, r, step, 1)[i]).float() for r, g in enumerate(per_rank)) / ranks
        adam.step()
        adam.zero_grad()
        after.append([c.detach().to(p.dtype, copy=True) for c, p in zip(copies, params)])
    return after


def assert_same_params(got: list, want: list, where: str) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, f"{where}, parameter {i}: {g.dtype}, expected {w.dtype}"
        torch.testing.assert_close(g, w, rtol=0, atol=0, msg=lambda m: f"{where}, parameter {i} {ADAM_PARAMS[i]}: {m}")


def test_sharded_adam_on_one_process_is_torch_adam():
    """One process: no collective; fp32 parameters stepped in place, bf16 ones through fp32 masters: torch.optim.Adam's
    parameters bit for bit, for parameters the loss reads and those it does not."""
    params = adam_params()
    adam = make_adam(params)
    for step in range(3):
        for p, g0, g1 in zip(params, adam_grads(params, 0, step, 0), adam_grads(params, 0, step, 1)):
            p.grad = None if g0 is None else g0 + g1
        adam.step()
        assert_same_params([p.detach() for p in params], adam_reference(step + 1, 1)[step], f"step {step}")


def test_sharded_adam_restores_its_state_dict_masters_included():
    """The warm-up's restore on one process: a deep copy of the state dict (bf16 parameters' fp32 masters in it)
    and of the parameters, taken after step 1, brings steps 2 and 3 back to the same bits."""
    params = adam_params()
    adam = make_adam(params)
    assert len(adam.masters) == sum(d == "bfloat16" for _, d, _, _ in ADAM_PARAMS)

    def step(s):
        for p, g0, g1 in zip(params, adam_grads(params, 0, s, 0), adam_grads(params, 0, s, 1)):
            p.grad = None if g0 is None else g0 + g1
        adam.step()

    step(0)
    saved = copy.deepcopy(adam.state_dict()), [p.detach().clone() for p in params]
    for s in (1, 2):
        step(s)
    want = [p.detach().clone() for p in params]
    adam.load_state_dict(saved[0])
    with torch.no_grad():
        for p, q in zip(params, saved[1]):
            p.copy_(q)
    for s in (1, 2):
        step(s)
    assert_same_params([p.detach() for p in params], want, "steps 2 and 3 again")


DIST_ADAM = """
import copy, sys
sys.path.insert(0, {repo!r})
sys.path.insert(0, {repo!r} + "/tests")
import torch
import torch.distributed as dist
from helpers import adam_grads, adam_groups, adam_params
from optim import GradSync, ShardedAdam

dist.init_process_group("gloo")
rank = dist.get_rank()
params = adam_params()
groups, sharded = adam_groups(params)
adam = ShardedAdam(groups, sharded=sharded, world_size=2, rank=rank, betas=(0.8, 0.95), eps=1e-10, fused=True)
sync = GradSync(params, [adam], world_size=2)
launched, after = [], []  # the buckets launched by the end of each micro-step's backward; the parameters

def step(s):
    for micro in range(2):  # two accumulated micro-steps: the hooks communicate on the second only
        sync.last_micro_step = micro == 1
        sum((p.float() * g.float()).sum() for p, g in zip(params, adam_grads(params, rank, s, micro))
            if g is not None).backward()
        launched.append(sync.launched)
    sync.finish()
    adam.step()
    adam.wait()
    for p in params:
        p.grad = None

for s in range(3):
    step(s)
    after.append([p.detach().clone() for p in params])
    if s == 0:
        saved = copy.deepcopy(adam.state_dict()), copy.deepcopy(after[0])
states = sorted(state["exp_avg"].numel() for state in adam.state.values())
adam.load_state_dict(saved[0])  # the warm-up's restore: the state after step 1, masters included
with torch.no_grad():
    for p, q in zip(params, saved[1]):
        p.copy_(q)
for s in (1, 2):
    step(s)
torch.save(dict(after=after, again=[p.detach() for p in params], launched=launched, states=states),
           f"{out}/adam{{rank}}.pt")
dist.destroy_process_group()
"""


def test_sharded_adam_on_two_processes_is_torch_adam(tmp_path):
    """Two gloo processes, gradients averaged from GradSync's hooks: every rank ends each step with
    torch.optim.Adam's parameters on the mean gradient, bit for bit, holds Adam's state for its slices only, and
    a restored state dict (masters included) gives the same steps again."""
    run_two_processes(fill(DIST_ADAM, tmp_path), tmp_path)
    want = adam_reference(3, 2)
    for rank in range(2):
        got = torch.load(tmp_path / f"adam{rank}.pt")
        for step in range(3):
            assert_same_params(got["after"][step], want[step], f"rank {rank}, step {step}")
        assert_same_params(got["again"], want[2], f"rank {rank}, steps 2 and 3 again from step 1's state dict")
        # the backward launches the 5 read sharded parameters' reduce-scatters; the unread sharded one's bucket and
        # the whole ones' (one of them unread) wait for finish()
        assert got["launched"][:6] == [0, 5] * 3
        # the whole ones' state (3 and 4 elements), the slices' (21 -> 11 + 10, 40 -> 20 + 20, 1 -> 1 + 0,
        # 45 -> 23 + 22, 48 -> 24 + 24); an empty slice is never stepped
        assert got["states"] == sorted([3, 4, 20, 24] + ([11, 1, 23] if rank == 0 else [10, 22]))
