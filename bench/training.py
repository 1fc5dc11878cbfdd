"""Trainer throughput against a minimal hand-written PyTorch loop: same model, data, device, one run.

    python bench/training.py                      # CPU here; on a GPU machine it uses CUDA (bf16)
    python bench/training.py --hidden 8192 --samples 262144 --batch-size 4096   # fill a big GPU

Both sides train the same MLP on the same synthetic tensors with AdamW for the same epochs, evaluate on the
validation split and write a checkpoint (model + optimizer) every epoch: the trainer through its store
(checksummed, atomic), the baseline with ``torch.save`` to a file. Samples/s is counted over the whole call,
set-up included. Runs alternate, the median of ``--reps`` counts, and the ratio trainer/baseline is printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from shipyard.params import DatasetRef, TrainParams
from shipyard.settings import Settings
from shipyard.storage import filesystem
from shipyard.training import TrainContext, train
from shipyard.training.loop import seed_everything

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}  # dense
SHAPE = {"features": 256, "classes": 10}


def _data(samples: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, SHAPE["features"], generator=gen)
    w = torch.randn(SHAPE["features"], SHAPE["classes"], generator=gen)
    y = (x @ w).argmax(1)
    n_val = samples // 10
    return TensorDataset(x[n_val:], y[n_val:]), TensorDataset(x[:n_val], y[:n_val])


def _model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(SHAPE["features"], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, SHAPE["classes"]))


class BenchRecipe:
    """The benchmark's model and data as a recipe (entrypoint ``__main__:recipe``)."""

    samples = 16384

    def __init__(self, params: TrainParams) -> None:
        self.params = params

    def build_model(self) -> nn.Module:
        return _model(self.params.hidden_units)

    def datasets(self, data_dir: Path) -> tuple[Dataset[Any], Dataset[Any]]:
        return _data(self.samples, self.params.seed)

    def training_step(self, model: nn.Module, batch: Any, ctx: TrainContext) -> torch.Tensor:
        x, y = (t.to(ctx.device, non_blocking=True) for t in batch)
        return nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader[Any], ctx: TrainContext) -> dict[str, float]:
        correct = total = 0
        for x, y in loader:
            correct += int((model(x.to(ctx.device)).argmax(1) == y.to(ctx.device)).sum())
            total += len(y)
        return {"val_accuracy": correct / total}

    def input_example(self) -> Any:
        return torch.zeros(2, SHAPE["features"]).numpy()

    def serving_model(self, model: nn.Module) -> nn.Module:
        return model


def recipe(params: TrainParams) -> BenchRecipe:
    """Entrypoint of the benchmark recipe."""
    return BenchRecipe(params)


def run_trainer(params: TrainParams, root: Path) -> float:
    """Return samples/s of shipyard's trainer, end to end."""
    store = filesystem(Settings(store_uri=str(root / "store")))
    started = time.perf_counter()
    result = train(store, DatasetRef(name="bench", version=f"{time.monotonic_ns():016x}"[-16:]), params, root)
    seconds = time.perf_counter() - started
    return sum(h.samples for h in result.history) / seconds


def run_baseline(params: TrainParams, root: Path) -> float:
    """Return samples/s of a minimal hand-written loop doing the same work."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    seed_everything(params.seed, device)
    train_set, val_set = _data(BenchRecipe.samples, params.seed)
    model = _model(params.hidden_units).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay,
                                  fused=device.type == "cuda")
    loader = DataLoader(train_set, batch_size=params.batch_size, shuffle=True, pin_memory=device.type == "cuda")
    val_loader = DataLoader(val_set, batch_size=max(params.batch_size, 256))
    autocast = device.type == "cuda"
    for epoch in range(params.epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in val_loader)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                   root / f"baseline-{epoch}.pt")
    torch.save(model.state_dict(), root / "baseline-model.pt")
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(train_set) * params.epochs / (time.perf_counter() - started)


def _flops_per_sample(hidden: int) -> float:
    params = SHAPE["features"] * hidden + hidden * hidden + hidden * SHAPE["classes"]
    return 6.0 * params  # forward + backward of the matmuls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    BenchRecipe.samples = args.samples
    params = TrainParams(entrypoint="__main__:recipe", epochs=args.epochs, batch_size=args.batch_size,
                         hidden_units=args.hidden)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    trainer, baseline = [], []
    with tempfile.TemporaryDirectory() as tmp:
        run_baseline(params.model_copy(update={"epochs": 1}), Path(tmp))  # warm-up: allocator, kernels, threads
        run_trainer(params.model_copy(update={"epochs": 1}), Path(tmp))
        for _ in range(args.reps):
            baseline.append(run_baseline(params, Path(tmp)))
            trainer.append(run_trainer(params, Path(tmp)))
    ours, theirs = statistics.median(trainer), statistics.median(baseline)
    print(f"device: {device}; model: MLP {SHAPE['features']}-{args.hidden}-{args.hidden}-{SHAPE['classes']}; "
          f"{args.samples} samples (90% train), batch {args.batch_size}, {args.epochs} epochs, checkpoint every epoch")
    print(f"baseline loop: {theirs:,.0f} samples/s (median of {args.reps}: {', '.join(f'{v:,.0f}' for v in baseline)})")
    print(f"trainer:       {ours:,.0f} samples/s (median of {args.reps}: {', '.join(f'{v:,.0f}' for v in trainer)})")
    print(f"ratio trainer/baseline: {ours / theirs:.3f}x (target >= 0.95x)")
    if torch.cuda.is_available():
        tflops = ours * _flops_per_sample(args.hidden) / 1e12
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device), None)
        shown = f" = {100 * tflops / peak:.1f}% of the {peak:.0f} TFLOP/s bf16 peak" if peak else ""
        print(f"achieved: {tflops:.1f} TFLOP/s{shown}")
    return 0 if ours / theirs >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
