"""The PyTorch section of the throughput benchmark: torchvision's same model, eager and under
torch.compile, autocast bfloat16, channels_last, SGD with momentum and weight decay (the
reference vgg_jax is measured against, run in its own process on the same card)."""

from __future__ import annotations

import platform
import time

from benchmarks.timing import print_progress, result_row, timed_rate


def torch_section(args) -> dict:
    try:
        import torch
        import torchvision
    except ImportError as error:
        return {"skipped": f"PyTorch or torchvision is not installed ({error.name})", "rows": []}
    if args.width != 1.0 or args.fc_features != 4096 or not hasattr(torchvision.models, args.model):
        return {
            "skipped": f"torchvision builds only the paper's widths of vgg11/13/16/19[_bn]; "
            f"asked for {args.model} at width {args.width} with {args.fc_features} FC features",
            "rows": [],
        }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    environment = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    rows = []
    for mode in args.torch:
        # The largest training batch only: torch.compile costs a minute per shape on a GPU.
        for batch_size in args.train_batch_sizes[-1:]:
            rows.append(_torch_run(args, device, autocast_dtype, mode, "train", batch_size))
            print_progress(rows[-1])
        for batch_size in args.inference_batch_sizes:
            rows.append(_torch_run(args, device, autocast_dtype, mode, "inference", batch_size))
            print_progress(rows[-1])
    return {"environment": environment, "rows": rows}


def _torch_run(args, device, autocast_dtype, mode: str, kind: str, batch_size: int) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=args.num_classes)
    model = model.to(device, memory_format=torch.channels_last)
    images = torch.randn(batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_classes, (batch_size,), device=device)
    forward = torch.compile(model) if mode == "compile" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step():
        with torch.autocast(device.type, dtype=autocast_dtype):
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def inference_step():
        with torch.autocast(device.type, dtype=autocast_dtype):
            forward(images)

    model.train(kind == "train")
    step = train_step if kind == "train" else inference_step

    def run(count):
        for _ in range(count):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    run(1)
    first_step_seconds = time.perf_counter() - started
    rate = timed_rate(run, args.steps, args.repeats, batch_size)
    row = result_row(f"torchvision {mode}", kind, batch_size, rate, None)
    return row | {"seconds_to_first_step": first_step_seconds}
