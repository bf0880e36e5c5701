"""Attention implementations side by side: python -m benchmarks.attention
    [--shapes=8x2048x16x128,2x8192x16x128] [--dtype=bfloat16] [--causal=both]
    [--implementations=pallas,cudnn,xla] [--iters=20]

Times the forward pass and the forward and backward passes together of each implementation of
llama_jax.attention.dot_product_attention, at each shape batch x seq x heads x head_dim. Prints one
JSON object per measurement: milliseconds per call (the mean of --iters calls after a warm-up
call that compiles) and TFLOP/s. FLOPs: 4 * batch * heads * seq^2 * head_dim for the forward pass
(two matmuls), 2.5 times that for the backward pass (five matmuls), and half of each when causal.
An implementation that this backend cannot run gives a row with "skipped" and the reason. Off GPU,
pallas runs in Pallas interpret mode: its times there measure the interpreter, not the kernel.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax

from llama_jax.attention import dot_product_attention

PASSES = ("forward", "forward+backward")


def _flops(shape: tuple[int, ...], causal: bool, attention_pass: str) -> float:
  batch, seq, heads, head_dim = shape
  forward = 4 * batch * heads * seq * seq * head_dim
  flops = forward * (3.5 if attention_pass == "forward+backward" else 1)
  return flops / 2 if causal else flops


def _seconds_per_call(fn, args, iters: int) -> float:
  jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / iters


def _measure(implementation: str, shape: tuple[int, ...], dtype: str, causal: bool,
             iters: int) -> None:
  q, k, v, do = (jax.random.normal(key, shape, dtype)
                 for key in jax.random.split(jax.random.key(0), 4))
  attend = functools.partial(dot_product_attention, causal=causal, implementation=implementation)
  calls = {"forward": (jax.jit(attend), (q, k, v)),
           "forward+backward": (jax.jit(lambda q, k, v, do: jax.vjp(attend, q, k, v)[1](do)),
                                (q, k, v, do))}
  for attention_pass in PASSES:
    row = {"benchmark": "attention", "implementation": implementation, "pass": attention_pass,
           "shape": list(shape), "dtype": dtype, "causal": causal,
           "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}
    fn, args = calls[attention_pass]
    try:
      seconds = _seconds_per_call(fn, args, iters)
    except (ValueError, NotImplementedError, RuntimeError) as error:  # runtime: e.g. out of memory
      row["skipped"] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    else:
      row["ms"] = float(f"{seconds * 1e3:.4g}")
      row["tflops"] = float(f"{_flops(shape, causal, attention_pass) / seconds / 1e12:.3g}")
    print(json.dumps(row), flush=True)


def _shapes(text: str) -> list[tuple[int, ...]]:
  shapes = [tuple(int(n) for n in shape.split("x")) for shape in text.split(",")]
  if any(len(shape) != 4 for shape in shapes):
    raise argparse.ArgumentTypeError(f"{text!r}: each shape is batch x seq x heads x head_dim")
  return shapes


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", type=_shapes, default="8x2048x16x128,2x8192x16x128",
                      help="comma-separated batch x seq x heads x head_dim")
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--causal", default="both", choices=["true", "false", "both"])
  parser.add_argument("--implementations", default="pallas,cudnn,xla")
  parser.add_argument("--iters", type=int, default=20)
  args = parser.parse_args(argv)
  causal = {"true": [True], "false": [False], "both": [True, False]}[args.causal]
  for shape in args.shapes:
    for is_causal in causal:
      for implementation in args.implementations.split(","):
        _measure(implementation, shape, args.dtype, is_causal, args.iters)


if __name__ == "__main__":
  main()
