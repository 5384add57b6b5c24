"""Process-group plumbing for runs launched by ``torchrun`` (one process per GPU, or per CPU
share with gloo).

``torchrun --nproc-per-node N -m rvos train CONFIG`` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment; :func:`setup`
reads them (when WORLD_SIZE > 1) and joins the process group: NCCL when the processes run
on GPUs (process LOCAL_RANK takes ``cuda:LOCAL_RANK``), gloo on CPUs. Without torchrun
(WORLD_SIZE unset or 1) nothing is initialised and every helper here is the single-process
identity, so the trainers call them unconditionally.

Rank 0 is the one that writes (checkpoints, metrics.csv, TensorBoard, config.yaml) and
prints; the others compute their share and wait for it at the collectives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from rvos.errors import RVOSError

# Collectives wait this long for a late rank (a rank-0-only validation of a large split
# included) before failing; torch's default for NCCL is 10 minutes.
TIMEOUT = timedelta(minutes=60)
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes: it takes items ``rank``,
    ``rank + world``, ... of a list (:meth:`take`)."""

    rank: int = 0
    world: int = 1

    def take(self, items: list) -> list:
        return items[self.rank::self.world]


def requested_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun)."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        value = int(text)
    except ValueError:
        raise RVOSError(f"environment variable WORLD_SIZE={text!r} is not an integer") from None
    if value < 1:
        raise RVOSError(f"environment variable WORLD_SIZE={value} must be >= 1")
    return value


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True in rank 0 (and in a single process): the process that writes and prints."""
    return rank() == 0


def shard() -> Shard:
    return Shard(rank(), world_size())


def setup(device: str = "auto") -> torch.device:
    """Join torchrun's process group when WORLD_SIZE > 1 (once; later calls return the same
    device) and return the device of this process: ``cuda:LOCAL_RANK`` on GPUs (backend
    NCCL), the CPU otherwise (backend gloo). ``device`` is ``train.device``: auto, cpu or
    cuda (an explicit ``cuda:N`` is refused under torchrun, where LOCAL_RANK picks the GPU).
    Without torchrun: :func:`rvos.inference.resolve_device` of ``device``."""
    from rvos.inference import resolve_device

    if requested_world_size() == 1 and not is_distributed():
        return resolve_device(device)
    target = process_device(device)
    if is_distributed():
        return target
    missing = [v for v in TORCHRUN_VARIABLES if v not in os.environ]
    if missing:
        raise RVOSError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: "
                        "start distributed runs with torchrun (torchrun --nproc-per-node N -m "
                        "rvos train ...)")
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo", init_method="env://",
                            timeout=TIMEOUT)
    return target


def requested_rank() -> int:
    """RANK as torchrun sets it (0 without torchrun), read without joining a group."""
    return int(os.environ.get("RANK", "0"))


def process_device(device: str = "auto") -> torch.device:
    """The device of this torchrun process, without joining the process group:
    ``cuda:LOCAL_RANK`` on GPUs, the CPU otherwise (see :func:`setup`)."""
    if device not in ("auto", "cpu", "cuda"):
        raise RVOSError(f"device {device}: under torchrun each process takes the GPU "
                        "cuda:LOCAL_RANK; ask for auto, cuda or cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        if not torch.cuda.is_available():
            raise RVOSError("train.device=cuda asked for, but CUDA is not available here")
        if local_rank >= torch.cuda.device_count():
            raise RVOSError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs "
                            "here: start at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def teardown() -> None:
    """Leave the process group (at the end of a command; a no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def refuse(what: str) -> None:
    """RVOSError when launched on several processes: ``what`` (e.g. "model.kind grounding
    trains") runs in one only."""
    if requested_world_size() > 1 or is_distributed():
        raise RVOSError(f"{what} in one process; run it without torchrun (model.kind baseline "
                        "or query without train.feature_cache trains on several)")


# ----------------------------------------------------------------------------- collectives
def _collective_device() -> torch.device:
    """Where tensors for collectives live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_max(values: list[float]) -> list[float]:
    """The element-wise maximum of ``values`` over the ranks (a stop requested by any rank,
    a failure seen by any): every rank gets the same answer. Identity in one process."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over the ranks (the same keys on every rank, in any order)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {k: v / world_size() for k, v in zip(keys, t.tolist())}


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def run_on_main(fn, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 alone, its result broadcast to every rank; an
    RVOSError it raises is raised on every rank (the others would wait for ever)."""
    return _on_main(fn, args, kwargs, share=True)


def main_only(fn, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` on rank 0 alone (writing a file): its result there, None on
    the others, which wait for it; an RVOSError or OSError it raises is raised on every
    rank."""
    return _on_main(fn, args, kwargs, share=False)


def _on_main(fn, args: tuple, kwargs: dict, share: bool) -> Any:
    if not is_distributed():
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except (RVOSError, OSError) as e:
            error = e
    failed = broadcast_object(None if error is None else str(error))
    if failed is not None:
        if error is not None:
            raise error
        raise ReportedByRankZero(f"rank 0 failed: {failed}")
    return broadcast_object(result) if share else (result if is_main() else None)


class ReportedByRankZero(RVOSError):
    """An error another rank met and reports (rank 0 prints it); this rank stops with it
    silently."""

    reported_by_rank_zero = True


# ----------------------------------------------------------------------------- BatchNorm
class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: each rank's input feeds every rank's output, so
    the gradient of an input is the sum of the output gradients of all ranks."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the batch of every rank
    together (gloo on CPUs, where ``torch.nn.SyncBatchNorm`` does not run): the per-channel
    sums, sums of squares and counts are all-reduced with autograd, so the forward and the
    gradients are those of one process holding the whole batch (within float rounding).
    Eval mode and single processes: plain BatchNorm. Input (N, C, *)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.full((1,), x.numel() // c, dtype=xf.dtype, device=x.device)
        stats = _SumOverRanks.apply(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)     # biased, as BatchNorm's
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        shape = (1, c, *([1] * (x.dim() - 2)))
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``model`` normalising over the global batch: torch's
    SyncBatchNorm on GPUs, :class:`GlobalBatchNorm` on CPUs. Parameters and buffers are the
    same objects under the same names (checkpoints and optimizers are unaffected)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (nn.SyncBatchNorm, GlobalBatchNorm)):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        return out
    for name, child in module.named_children():
        new = _convert(child)
        if new is not child:
            setattr(module, name, new)
    return module
