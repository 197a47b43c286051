"""Memory cost of AEES in both adapters, in units of the parameters' size, on CPU (issue 16).

optax: ``jax.jit(step, donate_argnums=(0, 1)).lower(...).compile().memory_analysis()``
of one donated train step (forward, backward, optimizer, apply): the sizes of
its arguments, outputs, the outputs aliased onto donated arguments, and its
temporaries, for ``optax.adamw(1e-3)`` and AEES around it. Shapes: the MLP of
``optax_bench.py`` (64-1024-1024-10), a chain of 64 ``tanh(h @ W_i)`` layers
with ``W_i`` 256x256 (64 leaves) and a chain of 12 such layers of 1024x1024.
Nothing is run, so these figures do not depend on the machine's load.

torch: one fresh process per (model, variant), with ``MALLOC_MMAP_THRESHOLD_``
fixed at 64 KiB so that every tensor of that size or more is its own mapping and
the resident set follows the tensors alive. The process first runs the same
wrapper configuration on a tiny model across a few episodes, so that the JAX
core is compiled before anything is measured. Then, on the measured model, for
each of ``STEPS`` training steps (``episode_length=5``): the resident set just
before the step (the resting memory), then the peak resident set during the
step (``VmHWM`` after resetting it through ``/proc/self/clear_refs``). Steps
that close an episode or open the next one are the boundary steps. The bytes
held by the wrapper are the sizes of the distinct tensor storages reachable
from its attributes that the model and the optimizer do not own.

    .venv/bin/python benchmarks/memory_bench.py [--write]

``--write`` writes the tables to ``benchmarks/results_memory.md``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _sections import publish

RESULTS = Path(__file__).with_name("results_memory.md")
MIB = 2**20

# Issue 16's bars.
BAR_OPTAX_TEMP = 0.1  # aees defaults' temporaries <= adamw's + 0.1 x params
BAR_TORCH_BOUNDARY = 0.1  # robust boundary high-water <= resting + 0.1 x largest tensor
# Storages this small are the torch wrapper's bookkeeping, not buffers.
BOOKKEEPING_BYTES = 4096

OPTAX_SHAPES = ("mlp", "deep_64x256", "deep_12x1024")
OPTAX_VARIANTS = (
    "adamw",
    "apply_if_finite",
    "aees",
    "aees_no_norm",
    "aees_noise_arms",
    "aees_robust",
    "aees_trusting",
    "aees_trusting_no_norm",
)

TORCH_MODELS = {
    "linear4096_sgd": "one Linear(4096, 4096), SGD(lr=1e-2), batch 8",
    "mlp_adamw": "MLP 512-2048-2048-10 (ReLU), AdamW(lr=1e-3), batch 8",
}
TORCH_EPISODE = 5
TORCH_KNOBS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "aees": {},
    "aees_no_norm": {"track_update_norm": False},
    "aees_robust": {"preset": "robust"},
}
STEPS = 40


# ----------------------------------------------------------------------------- optax


def optax_transformation(variant: str) -> Any:
    import optax

    import pulseopt_optax

    adamw = optax.adamw(1e-3)
    lr = (0.5, 1.0, 2.0)
    if variant == "adamw":
        return adamw
    if variant == "apply_if_finite":
        return optax.apply_if_finite(adamw, 3)
    if variant == "aees":
        return pulseopt_optax.aees(adamw, lr_candidates=lr, seed=0)
    if variant == "aees_no_norm":
        return pulseopt_optax.aees(adamw, lr_candidates=lr, seed=0, track_update_norm=False)
    if variant == "aees_noise_arms":
        return pulseopt_optax.aees(adamw, lr_candidates=lr, noise_candidates=(0.0, 0.01), seed=0)
    if variant == "aees_robust":
        return pulseopt_optax.aees(adamw, lr_candidates=lr, seed=0, preset="robust")
    if variant == "aees_trusting":
        return pulseopt_optax.aees(adamw, lr_candidates=lr, seed=0, skip_nonfinite_grads=False)
    if variant == "aees_trusting_no_norm":
        return pulseopt_optax.aees(
            adamw, lr_candidates=lr, seed=0, skip_nonfinite_grads=False, track_update_norm=False
        )
    raise ValueError(variant)


def optax_memory() -> dict[str, dict[str, Any]]:
    """``{shape: {"params": bytes, "description": str, variant: {field: bytes}}}``."""
    import jax
    import jax.numpy as jnp
    import optax
    from shapes_bench import deep_mlp, make_shape, make_step

    shapes = {
        "mlp": lambda: make_shape("mlp"),
        "deep_64x256": lambda: deep_mlp(64, 256, 8),
        "deep_12x1024": lambda: deep_mlp(12, 1024, 8),
    }
    table: dict[str, dict[str, Any]] = {}
    for name in OPTAX_SHAPES:
        shape = shapes[name]()
        leaves = jax.tree.leaves(shape.params)
        row: dict[str, Any] = {
            "params": sum(leaf.nbytes for leaf in leaves),
            "leaves": len(leaves),
            "description": shape.description,
        }
        for variant in OPTAX_VARIANTS:
            tx = optax.with_extra_args_support(optax_transformation(variant))
            opt_state = jax.eval_shape(tx.init, shape.params)
            params = jax.eval_shape(lambda p: jax.tree.map(jnp.copy, p), shape.params)
            step = jax.jit(make_step(shape, tx), donate_argnums=(0, 1))
            stats = step.lower(params, opt_state, shape.batch).compile().memory_analysis()
            assert stats is not None, "this backend gives no memory analysis"
            row[variant] = {
                "arguments": stats.argument_size_in_bytes,
                "outputs": stats.output_size_in_bytes,
                "aliased": stats.alias_size_in_bytes,
                "temporaries": stats.temp_size_in_bytes,
            }
            print(f"optax {name} {variant}: {row[variant]}", file=sys.stderr, flush=True)
        table[name] = row
    return table


def optax_report(table: dict[str, dict[str, Any]]) -> list[str]:
    import jax

    lines = [
        "### optax: compiled memory of the donated train step",
        "",
        f"`memory_analysis()` of `jax.jit(step, donate_argnums=(0, 1))`, jax {jax.__version__}, "
        f"{jax.default_backend()} backend. Every figure in units of the parameters' size "
        "(P); temporaries also in MiB. Outputs aliased onto donated arguments cost no new "
        "memory; a step's peak is about arguments + outputs - aliased + temporaries. Variants: "
        "`optax.adamw(1e-3)`; `optax.apply_if_finite(adamw, 3)`; `aees(adamw, "
        "lr_candidates=(0.5, 1, 2), seed=0)` with the defaults, with "
        "`track_update_norm=False`, with `noise_candidates=(0.0, 0.01)`, with "
        '`preset="robust"` and with `skip_nonfinite_grads=False` (`aees_trusting`: no '
        "in-jit gradient check, so the gradients need not be held in full before the "
        "first leaf is updated), alone and with `track_update_norm=False` "
        "(`aees_trusting_no_norm`).",
        "",
    ]
    for name, row in table.items():
        lines.append(
            f"- `{name}`: {row['description']}; {row['leaves']} leaves, P = "
            f"{row['params'] / MIB:.1f} MiB."
        )
    lines += [
        "",
        "| shape | variant | arguments (P) | outputs (P) | aliased (P) | temporaries (P) | "
        "temporaries (MiB) | temporaries - adamw's (P) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in table.items():
        unit = row["params"]
        base = row["adamw"]["temporaries"]
        for variant in OPTAX_VARIANTS:
            m = row[variant]
            lines.append(
                f"| {name} | {variant} | {m['arguments'] / unit:.2f} | {m['outputs'] / unit:.2f} "
                f"| {m['aliased'] / unit:.2f} | {m['temporaries'] / unit:.3f} | "
                f"{m['temporaries'] / MIB:.1f} | {(m['temporaries'] - base) / unit:+.3f} |"
            )
    lines += [
        "",
        f"Issue 16's bar: temporaries of aees (defaults) <= adamw's + {BAR_OPTAX_TEMP}x P.",
        "",
        "| shape | variant | temporaries - adamw's (P) | limit | ok |",
        "|---|---|---:|---:|---|",
    ]
    for name, row in table.items():
        base = row["adamw"]["temporaries"]
        for variant in (
            "aees",
            "aees_no_norm",
            "aees_noise_arms",
            "aees_trusting",
            "aees_trusting_no_norm",
        ):
            extra = (row[variant]["temporaries"] - base) / row["params"]
            ok = "yes" if extra <= BAR_OPTAX_TEMP else "NO"
            lines.append(f"| {name} | {variant} | {extra:+.3f} | {BAR_OPTAX_TEMP:.2f} | {ok} |")
    return lines


# ----------------------------------------------------------------------------- torch


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _peak() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _held_bytes(wrapper: Any, model: Any, optimizer: Any, bookkeeping: bool = False) -> int:
    """Bytes of the distinct tensor storages reachable from the wrapper, not the user's own.

    With ``bookkeeping``, only the storages of at most `BOOKKEEPING_BYTES`
    count: counters, flags, the episode's per-step scalars.
    """
    import torch

    owned: set[int] = set()
    for param in model.parameters():
        owned.add(param.untyped_storage().data_ptr())
        if param.grad is not None:
            owned.add(param.grad.untyped_storage().data_ptr())
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                owned.add(value.untyped_storage().data_ptr())
    skip_types = (torch.optim.Optimizer, torch.nn.Module, torch.optim.lr_scheduler.LRScheduler)
    seen_objects: set[int] = set()
    storages: dict[int, int] = {}
    stack = [wrapper]
    while stack:
        node = stack.pop()
        if id(node) in seen_objects or isinstance(node, skip_types):
            continue
        seen_objects.add(id(node))
        if isinstance(node, torch.Tensor):
            storage = node.untyped_storage()
            if storage.data_ptr() not in owned and storage.data_ptr() != 0:
                storages[storage.data_ptr()] = storage.nbytes()
            continue
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend(node)
        elif hasattr(node, "__dict__") or hasattr(type(node), "__slots__"):
            if isinstance(node, type) or type(node).__module__.startswith(("jax", "numpy")):
                continue
            stack.extend(getattr(node, "__dict__", {}).values())
            for slot in getattr(type(node), "__slots__", ()):
                if hasattr(node, slot):
                    stack.append(getattr(node, slot))
    return sum(n for n in storages.values() if not bookkeeping or n <= BOOKKEEPING_BYTES)


def _torch_model(model_name: str, tiny: bool = False) -> tuple[Any, Any, Any, Any]:
    import torch

    torch.manual_seed(0)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    if model_name == "linear4096_sgd":
        width = 8 if tiny else 4096
        model = torch.nn.Linear(width, width)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        inputs, targets = torch.randn(8, width), torch.randn(8, width)
    else:
        sizes = (4, 8, 8, 2) if tiny else (512, 2048, 2048, 10)
        layers: list[torch.nn.Module] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        inputs, targets = torch.randn(8, sizes[0]), torch.randn(8, sizes[-1])
    return model, optimizer, inputs, targets


def _torch_worker(model_name: str, variant: str) -> dict[str, Any]:
    import torch

    from pulseopt_torch import AEES

    torch.set_num_threads(1)
    knobs = TORCH_KNOBS[variant]

    def build(tiny: bool) -> tuple[Any, ...]:
        model, optimizer, inputs, targets = _torch_model(model_name, tiny)
        wrapper = None
        if knobs is not None:
            wrapper = AEES(
                optimizer,
                lr_candidates=[0.5, 1.0, 2.0],
                episode_length=TORCH_EPISODE,
                seed=0,
                **knobs,
            )
        return model, optimizer, inputs, targets, wrapper

    def step(parts: tuple[Any, ...], index: int) -> None:
        model, optimizer, inputs, targets, wrapper = parts
        if wrapper is not None:
            wrapper.step_start(index)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        if wrapper is not None:
            wrapper.step_end(loss)
        else:
            optimizer.step()

    # Compile the JAX core on a tiny model first: the same configuration shares it.
    warm = build(tiny=True)
    for index in range(4 * TORCH_EPISODE):
        step(warm, index)
    del warm
    gc.collect()

    parts = build(tiny=False)
    model, optimizer, _, _, wrapper = parts
    params = list(model.parameters())
    record: dict[str, Any] = {
        "params": sum(p.numel() * p.element_size() for p in params),
        "largest": max(p.numel() * p.element_size() for p in params),
        "held_at_construction": _held_bytes(wrapper, model, optimizer) if wrapper else 0,
        "steps": [],
    }
    for index in range(STEPS):
        before = _rss()
        _reset_peak()
        step(parts, index)
        record["steps"].append({"before": before, "peak": _peak(), "after": _rss()})
        if index == 0:
            record["held_after_first_step"] = (
                _held_bytes(wrapper, model, optimizer) if wrapper else 0
            )
    record["held_at_end"] = _held_bytes(wrapper, model, optimizer) if wrapper else 0
    record["bookkeeping_at_end"] = (
        _held_bytes(wrapper, model, optimizer, bookkeeping=True) if wrapper else 0
    )
    record["optimizer_state"] = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    )
    return record


def _is_boundary(index: int) -> bool:
    """Steps that close an episode (its last) or open the next (its first)."""
    return index > 0 and index % TORCH_EPISODE in (0, TORCH_EPISODE - 1)


def torch_memory() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    for model_name in TORCH_MODELS:
        for variant in TORCH_KNOBS:
            command = [sys.executable, __file__, "--torch-worker", model_name, variant]
            output = subprocess.run(
                command, check=True, capture_output=True, text=True, env=env
            ).stdout
            table[f"{model_name}/{variant}"] = json.loads(output.strip().splitlines()[-1])
            print(f"torch {model_name} {variant} done", file=sys.stderr, flush=True)
    return table


def torch_report(table: dict[str, dict[str, Any]]) -> list[str]:
    import torch

    lines = [
        "### torch: high-water mark at episode boundaries and bytes held by the wrapper",
        "",
        f"torch {torch.__version__}, one thread, `AEES(optimizer, lr_candidates=[0.5, 1, 2], "
        f"episode_length={TORCH_EPISODE}, seed=0)` with the defaults, "
        '`track_update_norm=False` or `preset="robust"`; `plain` runs the optimizer alone. '
        f"{STEPS} steps from a fresh model, each in its own process (see the script's "
        "docstring). Resting: the resident set just before a step. Peak over resting: the "
        "step's high-water mark minus that, the largest over boundary steps (an episode's "
        "last step or the next one's first) and over ordinary steps (from step 2 on). Late "
        "growth: the resident set after the last step minus before step 1 (buffers allocated "
        "after the first step). Held: tensor storages reachable from the wrapper that the "
        "model and optimizer do not own. P: the parameters' size; T: the largest tensor's.",
        "",
    ]
    for model_name, description in TORCH_MODELS.items():
        record = table[f"{model_name}/plain"]
        lines.append(
            f"- `{model_name}`: {description}; P = {record['params'] / MIB:.1f} MiB, T = "
            f"{record['largest'] / MIB:.1f} MiB, optimizer state "
            f"{record['optimizer_state'] / record['params']:.2f} P."
        )
    lines += [
        "",
        "| model | variant | boundary peak over resting (T) | (P) | ordinary-step peak over "
        "resting (T) | boundary minus ordinary (T) | late growth (P) | held at construction "
        "(P) | after step 0 (P) | at end (P) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    checks = []
    boundaries: dict[str, float] = {}
    for key, record in table.items():
        model_name, variant = key.split("/")
        steps = record["steps"]
        rises = [s["peak"] - s["before"] for s in steps]
        boundary = max(rise for i, rise in enumerate(rises) if _is_boundary(i))
        ordinary = max(rise for i, rise in enumerate(rises) if i >= 2 and not _is_boundary(i))
        boundaries[key] = boundary
        late = steps[-1]["after"] - steps[1]["before"]
        p, t = record["params"], record["largest"]
        lines.append(
            f"| {model_name} | {variant} | {boundary / t:.3f} | {boundary / p:.3f} | "
            f"{ordinary / t:.3f} | {(boundary - ordinary) / t:+.3f} | {late / p:+.3f} | "
            f"{record['held_at_construction'] / p:.3f} | "
            f"{record['held_after_first_step'] / p:.3f} | {record['held_at_end'] / p:.3f} |"
        )
        if variant == "aees_robust":
            checks.append((model_name, boundary, ordinary, record))
    lines += [
        "",
        f"Issue 16's bars for the robust preset: boundary high-water <= resting + "
        f"{BAR_TORCH_BOUNDARY}x T; held <= one snapshot of the parameters and of the optimizer "
        "state (1 P + the optimizer state; + 1 P more only if the growth signal truly needs "
        "it). It does: growth compares the distance moved since the snapshot with the path "
        "length, the sum of every step's update norm, and a step's update is the difference "
        "from the parameters just before it, which no snapshot holds; so the limit below "
        "counts the update-norm buffer (the same 1 P the defaults hold for "
        "`mean_update_norms`). The optimizer's own step peaks above resting by itself "
        "(AdamW's per-tensor temporaries: see `plain`), so the high-water mark the wrapper "
        "adds is the boundary peak minus plain training's boundary peak in the same model, "
        "and, within the same run, minus the peak of its ordinary steps. Held memory counts "
        f"buffers apart from the bookkeeping (storages of at most {BOOKKEEPING_BYTES} "
        "bytes: counters, flags, the episode's per-step scalars), whose total is given in "
        "bytes.",
        "",
        "| model | check | measured | limit | ok |",
        "|---|---|---:|---:|---|",
    ]
    for model_name, boundary, ordinary, record in checks:
        p, t = record["params"], record["largest"]
        over_plain = (boundary - boundaries[f"{model_name}/plain"]) / t
        over_ordinary = (boundary - ordinary) / t
        held_limit = (2 * p + record["optimizer_state"]) / p
        bookkeeping = record["bookkeeping_at_end"]
        held = (record["held_at_end"] - bookkeeping) / p
        lines += [
            f"| {model_name} | boundary peak over resting (T) | {boundary / t:.3f} | "
            f"{BAR_TORCH_BOUNDARY:.2f} | {'yes' if boundary / t <= BAR_TORCH_BOUNDARY else 'NO'} |",
            f"| {model_name} | boundary peak over plain training's boundary peak (T) | "
            f"{over_plain:+.3f} | {BAR_TORCH_BOUNDARY:.2f} | "
            f"{'yes' if over_plain <= BAR_TORCH_BOUNDARY else 'NO'} |",
            f"| {model_name} | boundary peak over the run's ordinary-step peak (T) | "
            f"{over_ordinary:+.3f} | {BAR_TORCH_BOUNDARY:.2f} | "
            f"{'yes' if over_ordinary <= BAR_TORCH_BOUNDARY else 'NO'} |",
            f"| {model_name} | held by the wrapper, buffers (P) | {held:.3f} | "
            f"{held_limit:.2f} | {'yes' if held <= held_limit + 1e-9 else 'NO'} |",
            f"| {model_name} | held by the wrapper, bookkeeping (bytes) | {bookkeeping} | - | - |",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write benchmarks/results_memory.md")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-optax", action="store_true")
    parser.add_argument("--torch-worker", nargs=2, metavar=("MODEL", "VARIANT"))
    args = parser.parse_args(argv)
    if args.torch_worker:
        print(json.dumps(_torch_worker(*args.torch_worker)))
        return 0
    lines = [
        "## Memory: what each setting costs, in units of the parameters' size",
        "",
        "`python benchmarks/memory_bench.py`.",
    ]
    if not args.skip_optax:
        lines += ["", *optax_report(optax_memory())]
    if not args.skip_torch:
        lines += ["", *torch_report(torch_memory())]
    section = "\n".join(lines) + "\n"
    return publish(section, RESULTS, args.write)


if __name__ == "__main__":
    sys.exit(main())
