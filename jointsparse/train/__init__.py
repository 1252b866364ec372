"""The one trainer used by every stage: dense baseline, regularized retraining, fine-tuning,
codebook fine-tuning. Resumable bit-exactly, and data-parallel under ``torchrun``.

Hook protocol
-------------
A hook is any object with any subset of these methods (all optional, duck-typed)::

    parameters() -> list[Tensor] | dict   # extra trainable tensors: one extra optimizer param
                                          # group, weight_decay 0. A dict is taken as a whole
                                          # param group, e.g. {"params": [...], "lr": 0.01}.
    attach_optimizer(optimizer)           # once, after the optimizer is built and, on resume,
                                          # after its state has been restored
    penalty() -> Tensor | float           # added to the task loss each step, after the forward
    output_penalty(inputs, outputs, targets) -> Tensor | float
                                          # the same, from the batch and the model's outputs
                                          # (e.g. :class:`Distillation`'s teacher matching)
    on_batch_start(step)                  # before the forward (e.g. a per-batch noise draw)
    after_backward(step)                  # after loss.backward() (and after DDP's all-reduce),
                                          # before gradient clipping and optimizer.step()
    after_step(step)                      # after optimizer.step() and the LR update
    state_dict() -> dict                  # saved in every checkpoint (weights_only types only)
    load_state_dict(d)                    # on resume; must copy *into* existing tensors
                                          # (``t.copy_``): the optimizer holds references

Per training step the order is: every hook's ``on_batch_start`` -> forward -> task loss +
sum of ``penalty()`` and ``output_penalty(...)`` -> backward -> every ``after_backward`` -> grad
clip -> optimizer step -> LR scheduler step -> every ``after_step``. Hooks are called in the
order given. ``step`` is the 0-based global step (optimizer steps taken before this batch). Hooks act on the model object
the caller passed in, never on the DDP wrapper (the wrapper shares that module's parameters).
A hook's ``state_dict`` must include the values of its own extra parameters (e.g. learnable
coefficients); the trainer saves their optimizer state, not the tensors.

Tasks: ``task`` (a :class:`jointsparse.tasks.Task`, classification by default) supplies the
loss and the metric: cross-entropy and top-1 accuracy, or MSE and PSNR for super-resolution.
``train_loss`` is the task loss alone; ``penalty`` is the hooks' sum, logged separately. Records
name the metric by the task (``train_acc``/``test_acc``, ``train_psnr``/``test_psnr``).
Accuracies are fractions in [0, 1] everywhere in the API; percent only in printed text.

Resuming
--------
A checkpoint is written atomically at the end of every epoch and holds only tensors and plain
containers (``torch.load(weights_only=True)`` reads it): model, optimizer, scheduler and hooks'
states, epoch, global step, the RNG states of every rank (torch, numpy, python ``random``,
CUDA), the config and the data geometry. Data order comes from samplers seeded by
``(seed, epoch)`` (see :func:`jointsparse.data.make_loaders`), so a resumed run replays exactly
the batches the uninterrupted run would have seen; with the RNG states restored, the weights
are bit-identical (same machine, same thread count). A checkpoint from another model, stage,
config, data geometry or world size raises :class:`CheckpointError`.

Distributed
-----------
Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set), :func:`init_distributed`
starts a gloo (CPU) or nccl (CUDA) process group and :func:`train` wraps the model in DDP.
Gradients of hooks' extra parameters are averaged across ranks too. Evaluation runs on every
rank over a disjoint shard of the test set (``ShardSampler``) and the sums are all-reduced, so
every rank gets the exact full-test-set figures. Only rank 0 writes checkpoints and logs, and
only rank 0 prints.
"""

from __future__ import annotations

from .config import TrainConfig, TrainResult
from .distill import Distillation
from .distributed import get_rank, get_world_size, init_distributed, is_rank0
from .loop import evaluate, lr_factor, train
from .resume import CheckpointError, load_checkpoint, seed_everything

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "Distillation",
    "train",
    "evaluate",
    "load_checkpoint",
    "seed_everything",
    "init_distributed",
    "is_rank0",
    "get_rank",
    "get_world_size",
    "lr_factor",
]
