# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""CoLab's reused look-ahead step (``reuse_lookahead_gradient``) under DDP: two CPU ranks (gloo), one meta iteration.

Li et al., "Context Label Learning", IEEE TMI 2023 (methods.md 2.4-2.5). The reused step replaces DDP's backward pass,
so the trainer must average the look-ahead's gradients over the ranks itself: both ranks end with the same segmenter,
equal to an independent SGD step on the mean of the two ranks' gradients (each on its own batch and the generator's
target before its update), and with the same generator.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow  # torchrun, 2 processes

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from torch import nn
    from monai.engines import SupervisedTrainer
    from monai_imbalance.engines import ContextLabelIteration, ContextLabelLearner, ContextTargetLoss
    from monai_imbalance.losses import ContextLabelLoss, compose_context_target

    rank, out = int(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo", init_method="file://" + out + "/store", rank=rank, world_size=2)
    torch.set_num_threads(1)


    class TinySeg(nn.Module):
        def __init__(self, out_channels):
            super().__init__()
            self.out_channels = out_channels
            self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
            self.conv2 = nn.Conv3d(4, out_channels, 1)

        def forward(self, x):
            return self.conv2(torch.tanh(self.conv1(x)))


    def batch(seed):
        g = torch.Generator().manual_seed(seed)
        label = torch.zeros((2, 1, 6, 6, 6), dtype=torch.long)
        label[:, :, 2:4, 2:4, 2:4] = 1
        return {"image": torch.randn((2, 1, 6, 6, 6), generator=g), "label": label}


    torch.manual_seed(0)
    seg, gen = TinySeg(3), TinySeg(2)
    # the reference, computed on every rank from both ranks' batches before training
    reference = TinySeg(3)
    reference.load_state_dict(seg.state_dict())
    grads = []
    for b in (batch(0), batch(1)):
        q = torch.softmax(gen(b["image"]), 1).detach()
        loss = ContextLabelLoss()(reference(b["image"]), compose_context_target(q, b["label"], 2))
        grads.append(torch.autograd.grad(loss, list(reference.parameters())))
    with torch.no_grad():
        for p, g0, g1 in zip(reference.parameters(), *grads):
            p -= 0.1 * (g0 + g1) / 2
    ddp = nn.parallel.DistributedDataParallel(seg)
    learner = ContextLabelLearner(
        num_classes=2, num_context=2, generator=gen, optimizer=torch.optim.SGD(gen.parameters(), lr=1.0),
        meta_interval=1, reuse_lookahead_gradient=True, lookahead="batched",
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch(rank)], network=ddp,
        optimizer=torch.optim.SGD(ddp.parameters(), lr=0.1),
        loss_function=ContextTargetLoss(ContextLabelLoss(), learner), iteration_update=ContextLabelIteration(learner),
    )
    trainer.run()
    torch.save(
        {"segmenter": seg.state_dict(), "generator": gen.state_dict(), "reference": reference.state_dict(),
         "steps": learner.steps, "skipped": learner.skipped},
        out + f"/rank{rank}.pt",
    )
    dist.destroy_process_group()
    """
)


def test_reused_step_averages_the_gradient_over_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env_cmd = [sys.executable, str(script)]
    procs = [subprocess.Popen([*env_cmd, str(r), str(tmp_path)], stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 1 and ranks[0]["skipped"] == 0
    for k, ref in ranks[0]["reference"].items():
        assert torch.equal(ranks[0]["segmenter"][k], ranks[1]["segmenter"][k]), k
        torch.testing.assert_close(ranks[0]["segmenter"][k], ref, rtol=1e-6, atol=1e-6, msg=k)
    for k, v in ranks[0]["generator"].items():
        assert torch.equal(v, ranks[1]["generator"][k]), k
