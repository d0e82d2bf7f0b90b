"""Lightning Fabric example: a hand-written training loop that uses the functional API.

No LightningModule, no callbacks: the same tricks as plain functions on an ``nn.Module``.

1. Pretrain the digits CNN on 0-4 (``init_weights``; AdamW with ``no_bias_decay_groups``).
2. Fine-tune on 5-9: ``replace_head``, ``freeze_modules`` the backbone and train the head
   (each epoch starts with ``set_train_mode``, not ``model.train()``, so the frozen
   BatchNorm layers stay in eval mode and keep their running statistics);
   then ``unfreeze_into_optimizer``: the backbone trains again and joins the optimizer
   (a tenth of the head's learning rate, split into decay and no-decay parts by
   ``split_by_weight_decay``), as the ``FreezeBackbone`` callback does it.
Gradient checkpointing (``apply_gradient_checkpointing``) recomputes each residual
block's activations in the backward pass instead of storing them: less memory, a
little more compute (the gradients are the same).

3. Test with and without ``tta_predict``, and classify by nearest class mean on
   backbone features taken with ``extract_features``.

From the repository root::

    python examples/fabric/train_fabric.py                      # CPU
    python examples/fabric/train_fabric.py --gpu --devices 2    # DDP over 2 GPUs, 16-mixed
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F
from lightning.fabric import Fabric
from torch.utils.data import DataLoader

from examples.digits.common import (
    DigitsDataset,
    DigitsNet,
    add_common_args,
    configure_cpu,
    random_shift,
    write_summary,
)
from lightning_tricks.functional import (
    apply_gradient_checkpointing,
    count_parameters,
    extract_features,
    freeze_modules,
    init_weights,
    no_bias_decay_groups,
    replace_head,
    set_train_mode,
    split_by_weight_decay,
    split_dataset,
    tta_predict,
    unfreeze_into_optimizer,
)

TTA_VIEWS = ["five_crop:14"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, epochs=6, out="runs/fabric")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument(
        "--freeze-epochs", type=int, default=2, help="fine-tuning epochs with the backbone frozen"
    )
    parser.add_argument("--lr", type=float, default=1e-2)
    return parser.parse_args(argv)


def train_epochs(
    fabric: Fabric, model: Any, optimizer: Any, loader: DataLoader, epochs: int, limit: int | None
) -> float:
    """The plain loop; returns the last loss."""
    loss = torch.zeros(())
    for _ in range(epochs):
        # not ``model.train()``: that would put BatchNorm frozen by ``freeze_modules`` back in
        # training mode and its running statistics would drift with every batch
        set_train_mode(model)
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            loss = F.cross_entropy(model(random_shift(x)), y)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
    return float(loss.detach())


def stack(subset: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(subset[i] for i in range(len(subset))))
    return torch.stack(xs).to(device), torch.tensor(ys, device=device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Pretrain, fine-tune with freezing, evaluate with TTA and features; return the summary."""
    args = parse_args(argv)
    started = time.perf_counter()
    configure_cpu(args)
    fabric = Fabric(
        accelerator="gpu" if args.gpu else "cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        precision="16-mixed" if args.gpu else "32-true",
    )
    fabric.launch()
    fabric.seed_everything(args.seed)

    # 1. pretrain on 0-4 ------------------------------------------------------------------
    net = DigitsNet(num_classes=5)
    checkpointed = apply_gradient_checkpointing(net, "BasicBlock")  # before Fabric wraps it (DDP)
    init_weights(
        net, "kaiming_normal", zero_init_last_bn=True, generator=torch.Generator().manual_seed(args.seed)
    )
    source = DigitsDataset(classes=range(5))
    loader = fabric.setup_dataloaders(DataLoader(source, batch_size=64, shuffle=True))
    opt = torch.optim.AdamW(no_bias_decay_groups(net, 0.05), lr=args.lr / 3)
    model, optimizer = fabric.setup(net, opt)
    train_epochs(fabric, model, optimizer, loader, args.pretrain_epochs, args.limit_batches)

    # 2. fine-tune on 5-9: new head, frozen backbone, then unfrozen ------------------------
    target = DigitsDataset(classes=range(5, 10))
    train_set, test_set = split_dataset(target, [0.5, None], seed=args.seed, labels="targets")
    replace_head(net, 5, attr="head")
    frozen = freeze_modules(net, "backbone")  # requires_grad=False, BatchNorm in eval mode (kept
    # there by ``set_train_mode`` in ``train_epochs``; unfreezing lets it train again)
    counts_frozen = count_parameters(net)
    opt = torch.optim.AdamW(no_bias_decay_groups(net, 0.05), lr=args.lr)  # head only: trainable_only
    model, optimizer = fabric.setup(net, opt)
    loader = fabric.setup_dataloaders(DataLoader(train_set, batch_size=64, shuffle=True))
    train_epochs(fabric, model, optimizer, loader, args.freeze_epochs, args.limit_batches)

    # new groups copy the head's decayed group (AdamW, weight decay 0.05) at a tenth of its lr
    unfreeze_into_optimizer(
        net, "backbone", opt, lr_factor=0.1, split=lambda g: split_by_weight_decay(g, net)
    )
    if fabric.world_size > 1:  # DDP registered only the trainable parameters: wrap again
        model = fabric.setup_module(net)
    train_epochs(fabric, model, optimizer, loader, args.epochs - args.freeze_epochs, args.limit_batches)

    # 3. evaluate: plain, TTA, nearest class mean on backbone features ---------------------
    net.eval()
    x_test, y_test = stack(test_set, fabric.device)
    x_train, y_train = stack(train_set, fabric.device)
    with torch.inference_mode(), fabric.autocast():
        plain = (net(x_test).argmax(-1) == y_test).float().mean().item()
        tta = (tta_predict(net, x_test, TTA_VIEWS, "mean_softmax").argmax(-1) == y_test).float().mean().item()
        f_train = F.normalize(extract_features(net, x_train, ["backbone"])["backbone"].float(), dim=1)
        f_test = F.normalize(extract_features(net, x_test, ["backbone"])["backbone"].float(), dim=1)
    centroids = torch.stack([f_train[y_train == c].mean(0) for c in range(5)])
    ncm = ((f_test @ centroids.T).argmax(-1) == y_test).float().mean().item()

    summary = {
        "test_acc_plain": plain,
        "test_acc_tta": tta,
        "nearest_class_mean_acc": ncm,
        "frozen_tensors": len(frozen),
        "checkpointed": checkpointed,
        "params_while_frozen": counts_frozen,
        "optimizer_groups": len(opt.param_groups),
        "feature_dim": int(f_test.shape[1]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if fabric.is_global_zero:
        write_summary(args.out, summary)
        print(
            f"""
=== Fabric loop: pretrain 0-4, fine-tune 5-9 ({summary["seconds"]} s, world size {fabric.world_size})
frozen backbone       {len(frozen)} tensors, {counts_frozen["frozen"]:,} parameters frozen, \
{counts_frozen["trainable"]:,} trainable
checkpointed blocks   {", ".join(checkpointed)}
after unfreezing      {len(opt.param_groups)} optimizer groups (head decay/no-decay + backbone decay/no-decay)
test accuracy 5-9     plain {plain:.4f}   TTA {tta:.4f}   nearest class mean on features {ncm:.4f}
"""
        )
    return summary


if __name__ == "__main__":
    main()
