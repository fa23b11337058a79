"""The optimizers and the averaging of their gradients over the ranks: Muon, ShardedAdam, GradSync.

The trainer (train_gpt.make_optimizers) gives Muon the blocks' matrices and ShardedAdam the embeddings, the head
and the scalars. Communication per step, on W ranks (NCCL on GPUs, gloo in the CPU tests):
- Muon: each shape group's gradients stacked and reduce-scattered (mean, fp32), each rank's share orthogonalised,
  the updates all-gathered (bf16 on CUDA). fineweb-124m: 85M elements, 340 MB in, 170 MB out.
- ShardedAdam: each embedding table's and the head's gradient reduce-scattered (mean, fp32) in W slices, each
  rank's slice stepped, the slices all-gathered into the parameters (fp32, or the parameter's dtype); the
  scalars all-reduced as one flat buffer. fineweb-124m: 193M elements, 773 MB in (fp32), 464 MB out (its 4 bf16
  tables and the fp32 head).
- Order, the same on every rank: Muon's reduce-scatters, Adam's reduce-scatters and the scalars' all-reduce
  (GradSync, from the backward's hooks), then Muon's all-gathers (Muon.step, after Newton-Schulz), Adam's step
  (between Muon's all-gathers' launch and wait) and Adam's all-gathers, which the trainer waits for at the end
  of its step. So Newton-Schulz runs while Adam's gradients are on the wire, and Adam steps while Muon's
  updates are.
Collectives are torch 2.13's `*_single` where they exist, else 2.11's `reduce_scatter_tensor` /
`all_gather_into_tensor` (2.13 deprecates those names). Nothing here imports the trainer or the harness.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


def as_wide(t: Tensor) -> Tensor:
    """(..., M, K) -> (n, min(M, K), max(M, K)): the stack of matrices, tall ones transposed (a view)."""
    t = t.reshape(-1, *t.shape[-2:])
    return t.mT if t.size(-2) > t.size(-1) else t


def reduce_scatter(out: Tensor, inp: Tensor):  # the mean over the ranks, async (torch 2.13's name, else 2.11's)
    op = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return op(out, inp, op=dist.ReduceOp.AVG, async_op=True)


def all_gather(out: Tensor, inp: Tensor):  # async; in place where inp is out's slice at this rank's offset
    return (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, inp, async_op=True)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz (Keller Jordan, 2024), for hidden weight matrices.

    Per matrix: Nesterov momentum, then the update is orthogonalised by Newton-Schulz and scaled by
    max(1, rows/cols)^0.5; optional decoupled weight decay. A parameter (..., M, K) is a stack of (M, K)
    matrices, each taken wide (Newton-Schulz commutes with the transpose), so matrices group by shape
    across parameters: fineweb-124m's 33 q/k/v and 11 attention outputs (layer 7 has no attention) make one
    group of 44 (768, 768), padded with 4 zero matrices to 6 a rank on 8 ranks; its 12 MLP fc (transposed)
    and 12 projections one of 24 (768, 3072), 3 a rank.
    Distributed (modded-nanogpt's scheme): a group's gradients are stacked and reduce-scattered (mean), each
    rank keeps momentum for its share only and orthogonalises it, the updates are all-gathered: no rank
    repeats another's work. Gradients go in fp32 (NCCL would sum bf16 in bf16, rounding each partial sum to
    8 bits on its way to the fp32 momentum: not worth half a collective); updates in bf16 on CUDA, where
    Newton-Schulz iterates in bf16 (kernels/ and the reference), so the cast is exact and halves the
    all-gather. GradSync starts a group's reduce-scatter from the backward (`launch`); step() starts the rest.
    """

    def __init__(self, params, *, lr: float, momentum: float, weight_decay: float, ns_steps: int,
                 newton_schulz: Callable, world_size: int = 1):
        params = list(params)
        wide = {p: (min(p.shape[-2:]), max(p.shape[-2:])) for p in params}
        shapes = list(dict.fromkeys(wide.values()))  # first-seen order: the same on every rank
        groups = [dict(params=[p for p in params if wide[p] == s]) for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.ns_steps, self.newton_schulz, self.world_size = ns_steps, newton_schulz, world_size
        self.buckets = [g["params"] for g in self.param_groups]  # GradSync launches a group's reduce-scatter
        self.shares = {}  # group index -> (this rank's share of the mean gradients (share, m, k), its work or None)

    @torch.no_grad()
    def launch(self, i: int) -> None:
        """Start averaging group i's gradients over the ranks; this rank's share arrives in self.shares[i]."""
        params, W = self.param_groups[i]["params"], self.world_size
        grads = [as_wide(p.grad) for p in params]  # (n_p, m, k) each
        n = sum(g.size(0) for g in grads)
        share = -(-n // W)  # matrices per rank
        grads = torch.cat(grads + [grads[0].new_zeros(share * W - n, *grads[0].shape[1:])])  # (share * W, m, k)
        mine = grads if W == 1 else grads.new_empty(share, *grads.shape[1:])
        self.shares[i] = mine, None if W == 1 else reduce_scatter(mine, grads)

    @torch.no_grad()
    def step(self, between: Callable = lambda: None):
        """Orthogonalise this rank's share of each group, start the updates' all-gathers, run `between` (the
        trainer passes Adam's step) while they are in flight, then apply the updates."""
        W, gathers = self.world_size, []
        for i in range(len(self.param_groups)):  # every reduce-scatter not yet started, before any wait
            if i not in self.shares:
                self.launch(i)
        for i, group in enumerate(self.param_groups):
            mine, work = self.shares.pop(i)
            if work is not None:
                work.wait()
            state = self.state[group["params"][0]]  # the group's momentum: (share, m, k) for this rank's share only
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(mine)
            buf = state["momentum_buffer"]
            buf.lerp_(mine, 1 - group["momentum"])
            update = self.newton_schulz(mine.lerp_(buf, group["momentum"]), self.ns_steps)  # Nesterov
            update = update.to(torch.bfloat16) if update.is_cuda and W > 1 else update  # exact: see the docstring
            full = update if W == 1 else update.new_empty(W * update.size(0), *update.shape[1:])
            gathers.append((group, full, None if W == 1 else all_gather(full, update.contiguous())))
        between()
        for group, full, work in gathers:
            if work is not None:
                work.wait()
            params, lr = group["params"], group["lr"]
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            n = [p.numel() // full[0].numel() for p in params]  # matrices per parameter
            updates = full[: sum(n)].to(params[0].dtype).split(n)
            for tall in (False, True):  # back to each parameter's orientation and shape, scaled by its rows/cols
                pairs = [(p, (u.mT if tall else u).reshape(p.shape)) for p, u in zip(params, updates)
                         if (p.size(-2) > p.size(-1)) == tall]
                if pairs:
                    ps, us = map(list, zip(*pairs))
                    torch._foreach_add_(ps, us, alpha=-lr * max(1, ps[0].size(-2) / ps[0].size(-1)) ** 0.5)


class Slice(NamedTuple):
    """What one rank steps of an Adam parameter p: elements [lo, hi) of p.view(-1)."""

    stepped: Tensor  # an fp32 view of p's elements where p is fp32, else an fp32 copy of them (a master)
    lo: int
    hi: int
    size: int  # s, the slice every rank sends and receives: ceil(n / W) if sharded (the last ones zero-padded), else n
    sharded: bool


class ShardedAdam(torch.optim.Adam):
    """torch.optim.Adam (fused; its update bit for bit), its state and step sharded over W ranks (ZeRO-1, as
    modded-nanogpt's DistAdam). A sharded parameter's gradient is flattened, zero-padded to W s elements
    (s = ceil(n / W)) and reduce-scattered (mean, fp32); rank r steps elements [lo, hi) = [r s, (r + 1) s) and
    all-gathers them into every rank's parameter in its dtype, in place where W divides n. Slices, not whole
    parameters round-robin: fineweb-124m's 5 tables of 38.6M would leave 3 of 8 ranks idle. The rest (the
    scalars: fineweb-124m's 47 numbers in 24 tensors) are all-reduced as one flat buffer and stepped whole on
    every rank: sharding them would cost collectives and save nothing measurable. The math is fp32: `stepped`
    is a view of an fp32 parameter's slice, else (bf16) an fp32 master copy of it, kept in the state dict."""

    def __init__(self, groups: list[dict], *, sharded: list[Tensor], world_size: int = 1, rank: int = 0, **adam):
        self.W, self.of = world_size, {}  # parameter -> its Slice
        for p in (p for group in groups for p in group["params"]):
            n, shard = p.numel(), world_size > 1 and any(p is q for q in sharded)
            s, r = (-(-n // world_size), rank) if shard else (n, 0)
            lo, hi = min(r * s, n), min(r * s + s, n)
            stepped = p.detach().view(-1)[lo:hi].float()  # .float(): a view of an fp32 parameter, else a copy
            self.of[p] = Slice(stepped, lo, hi, s, shard)
        super().__init__([dict(g, params=[self.of[p].stepped for p in g["params"]]) for g in groups], **adam)
        self.sharded = [p for p in self.of if self.of[p].sharded]
        whole = [p for p in self.of if not self.of[p].sharded and p.numel()]
        self.buckets = [[p] for p in self.sharded] + ([whole] if whole and world_size > 1 else [])  # GradSync's
        self.masters = [x.stepped for p, x in self.of.items() if p.dtype != torch.float32]
        # in flight: bucket -> (its fp32 mean, its work, its input); the all-gathers (work, output, parameter, input)
        self.pending, self.gathers = {}, []

    @torch.no_grad()
    def launch(self, i: int) -> None:
        """Start averaging bucket i: one sharded parameter's reduce-scatter, or the others' flat all-reduce."""
        grads = [p.grad.reshape(-1).float() for p in self.buckets[i] if p.grad is not None]  # none: p never read
        if grads and i < len(self.sharded):
            g, s = grads[0], self.of[self.buckets[i][0]].size  # (n,), padded to (W s,)
            g = g if g.numel() == self.W * s else torch.cat([g, g.new_zeros(self.W * s - g.numel())])
            mean = g.new_empty(s)
            self.pending[i] = mean, reduce_scatter(mean, g), g  # g kept until the wait: the collective reads it
        elif grads:
            flat = torch.cat(grads)
            self.pending[i] = flat, dist.all_reduce(flat, op=dist.ReduceOp.AVG, async_op=True), flat

    @torch.no_grad()
    def step(self):
        """Wait for the mean gradients, step this rank's slices, start their all-gathers (wait() completes them)."""
        for i in range(len(self.buckets)):  # every collective not yet started, before any wait
            if i not in self.pending:
                self.launch(i)
        # the fp32 gradient of what this rank steps, flat: on one process the parameter's own; on W, its bucket's mean
        grads = {p: p.grad.reshape(-1).float() for p in self.of if p.grad is not None} if self.W == 1 else {}
        for i, (mean, work, _) in self.pending.items():
            work.wait()
            sizes = {p: self.of[p].hi - self.of[p].lo for p in self.buckets[i] if p.grad is not None}
            grads.update(zip(sizes, mean[: sum(sizes.values())].split(list(sizes.values()))))
        for p, x in self.of.items():  # no gradient (an unread parameter) or an empty slice: not stepped
            g = grads.get(p)
            x.stepped.grad = g.view_as(x.stepped) if g is not None and g.numel() else None
        super().step()
        for p, (stepped, lo, hi, s, sharded) in self.of.items():
            flat, in_place = p.detach().view(-1), self.W * s == p.numel()
            if p.dtype != torch.float32 and stepped.grad is not None:
                flat[lo:hi].copy_(stepped)
            if sharded and p.grad is not None:
                mine = flat[lo:hi] if in_place else torch.cat([flat[lo:hi], flat.new_zeros(s - hi + lo)])
                full = flat if in_place else flat.new_empty(self.W * s)
                self.gathers.append((all_gather(full, mine), full, flat, mine))
            stepped.grad = None
        self.pending = {}

    def wait(self) -> None:
        """Complete the all-gathers: every rank's parameters whole again."""
        for work, full, flat, _ in self.gathers:
            work.wait()
            if full is not flat:
                flat.copy_(full[: flat.numel()])
        self.gathers = []

    def state_dict(self):  # the masters are state: the warm-up's restore puts them back
        return {**super().state_dict(), "masters": self.masters}

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "masters"})
        for master, saved in zip(self.masters, state_dict["masters"], strict=True):
            master.copy_(saved)


class GradSync:
    """Gradient averaging launched from the backward (modded-nanogpt's gradient hooks; DDP's buckets): on the last
    micro-step only (DDP's no_sync), each parameter's post-accumulate-grad hook counts its bucket down, and complete
    buckets launch in one fixed order, each after those before it (every rank issues the same collectives in the
    same order): Muon's groups, then Adam's, each in about the backward's order. Under torch.compile every hook
    fires at the backward's end, so that is the order on the wire: Muon's reduce-scatters never wait behind Adam's
    773 MB (fineweb-124m's embeddings and head), and Newton-Schulz runs while those are in flight."""

    def __init__(self, params: list[Tensor], optimizers: list, world_size: int):
        index = {p: i for i, p in enumerate(params)}  # a bucket completes with its first parameter (~its last grad)

        def backward_order(opt) -> list[int]:
            return sorted(range(len(opt.buckets)), key=lambda i: -min(index[p] for p in opt.buckets[i]))

        self.buckets = [(opt.buckets[i], functools.partial(opt.launch, i)) for opt in optimizers
                        for i in backward_order(opt)] if world_size > 1 else []
        self.bucket_of = {p: b for b, (ps, _) in enumerate(self.buckets) for p in ps}
        self.last_micro_step, self.launched, self.missing = True, 0, [len(ps) for ps, _ in self.buckets]
        for p in self.bucket_of:
            p.register_post_accumulate_grad_hook(self._hook)

    def _hook(self, p: Tensor) -> None:
        if self.last_micro_step:
            self.missing[self.bucket_of[p]] -= 1
            self._launch()

    def _launch(self, everything: bool = False) -> None:
        """The next buckets in order, while they are complete (or all of them)."""
        while self.launched < len(self.buckets) and (everything or self.missing[self.launched] == 0):
            _, launch = self.buckets[self.launched]
            self.launched += 1
            launch()

    def finish(self) -> None:
        """Launch what the hooks have not (a parameter the forward never reads has no gradient: skipped); reset."""
        self._launch(everything=True)
        self.launched, self.missing = 0, [len(ps) for ps, _ in self.buckets]
