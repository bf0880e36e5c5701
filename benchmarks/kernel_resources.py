"""What the flash-attention kernels use on H100 and A100, compiled on this machine (no GPU needed):
python -m benchmarks.kernel_resources [--gpus=h100,a100] [--head_dims=64,128]
    [--shape=4x2048x16] [--sweep]

Compiles the forward, dq and dk/dv kernels of llama_jax.kernels.flash_attention (bfloat16, causal)
for each GPU's XLA target with the default tilings and prints one JSON object per kernel: its
tiling, registers per thread, spill bytes per thread (stores + loads, from ptxas), shared memory per
block, grid, threads per block, resident blocks per SM and the resource that limits them
(llama_jax.gpu_compile). With --sweep, each kernel's candidate tilings instead (SWEEP, one kernel
at a time), then the one `choose` picks for each kernel: how the defaults were chosen
(docs/results/attention.md). Compile-time facts
only: nothing here measures speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax

from llama_jax import gpu_compile
from llama_jax.gpu_compile import GPUS
from llama_jax.kernels.flash_attention import HEAD_DIMS, BlockSizes, Tiling, default_block_sizes

KERNELS = {"flash_attention_forward": "forward", "flash_attention_dq": "dq",
           "flash_attention_dkv": "dkv"}
# Candidates per kernel, (block_q, block_k, warps, stages), around FlashAttention-2's A100
# tilings (forward 128 x 64-128 with 4 warps; backward 64-128 x 128 with 8 warps) and
# FlashAttention-3's H100 ones (two warpgroups on 128 query rows forward, 64-128 x 128 backward).
# The resident block (queries in forward and dq, keys in dk/dv) is the one the others stream past.
SWEEP = {
    "forward": [Tiling(*t) for t in ((128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 2),
                                     (128, 64, 8, 3), (128, 64, 4, 2), (64, 128, 4, 2),
                                     (64, 64, 4, 2), (64, 64, 4, 3))],
    "dq": [Tiling(*t) for t in ((128, 64, 8, 2), (128, 64, 8, 3), (128, 32, 8, 2), (128, 32, 4, 2),
                                (64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (64, 32, 4, 2))],
    "dkv": [Tiling(*t) for t in ((64, 128, 8, 2), (64, 128, 8, 3), (32, 128, 8, 2), (64, 64, 8, 2),
                                 (64, 64, 4, 2), (128, 64, 8, 2), (32, 64, 4, 2), (32, 64, 8, 2))],
}
# What the other two kernels use while one is swept: small enough to compile everywhere.
_SWEEP_BASE = Tiling(32, 32, num_warps=4, num_stages=2)


def rows(gpu: str, head_dim: int, blocks: BlockSizes, shape: tuple[int, int, int]) -> list[dict]:
  """One row per kernel compiled with `blocks`."""
  result = []
  for kernel in gpu_compile.flash_attention_resources(gpu, head_dim, blocks, shape=shape):
    tiling = getattr(blocks, KERNELS[kernel.name])
    result.append({
        "benchmark": "kernel_resources", "gpu": gpu, "head_dim": head_dim,
        "shape": [*shape, head_dim], "kernel": KERNELS[kernel.name],
        "block_q": tiling.block_q, "block_k": tiling.block_k, "num_warps": tiling.num_warps,
        "num_stages": tiling.num_stages, "registers": kernel.registers,
        "spill_bytes": kernel.spill_bytes, "shared_memory": kernel.shared_memory,
        "grid": list(kernel.grid), "threads": kernel.threads,
        "blocks_per_sm": kernel.blocks_per_sm, "limited_by": kernel.limited_by,
        "ptxas_warnings": list(kernel.warnings)})
  return result


def choose(rows: list[dict]) -> dict:
  """The tiling each kernel gets by the rule docs/results/attention.md states, from sweep rows.

  No spill and no ptxas warning; at least 64 rows of the resident operand (FlashAttention-2/3
  keep 64 or 128: each resident block streams the other operand past it once); 15 registers of
  headroom below the 255 limit where any candidate has them; then the most resident warps per SM,
  the larger tile, the fewer stages.
  """
  def resident(row):
    return row["block_k"] if row["kernel"] == "dkv" else row["block_q"]

  usable = [row for row in rows if "error" not in row and row["spill_bytes"] == 0
            and not row["ptxas_warnings"] and resident(row) >= 64]
  roomy = [row for row in usable if row["registers"] <= 240] or usable
  if not roomy:
    raise ValueError("no candidate tiling compiles without spilling")
  return max(roomy, key=lambda row: (row["blocks_per_sm"] * row["num_warps"],
                                     row["block_q"] * row["block_k"], -row["num_stages"]))


def _shape(text: str) -> tuple[int, int, int]:
  shape = tuple(int(n) for n in text.split("x"))
  if len(shape) != 3:
    raise argparse.ArgumentTypeError(f"{text!r}: the shape is batch x seq x heads")
  return shape


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gpus", default="h100,a100")
  parser.add_argument("--head_dims", default="64,128")
  parser.add_argument("--shape", type=_shape, default="4x2048x16", help="batch x seq x heads")
  parser.add_argument("--sweep", action="store_true", help="every candidate tiling")
  args = parser.parse_args(argv)
  gpus = args.gpus.split(",")
  if unknown := [gpu for gpu in gpus if gpu not in GPUS]:
    parser.error(f"--gpus: {unknown} unknown; target configs are shipped for {sorted(GPUS)}")
  try:
    head_dims = [int(d) for d in args.head_dims.split(",")]
  except ValueError:
    parser.error(f"--head_dims={args.head_dims}: comma-separated integers, e.g. 64,128")
  if unsupported := [d for d in head_dims if d not in HEAD_DIMS]:
    parser.error(f"--head_dims: {unsupported} not among the kernel's {HEAD_DIMS}")
  for gpu in gpus:
    device = gpu_compile.gpu_devices(gpu)[0]
    for head_dim in head_dims:
      # A sweep varies one kernel at a time, so that a tiling the GPU cannot hold fails alone.
      candidates = ([(kernel, dataclasses.replace(BlockSizes(*[_SWEEP_BASE] * 3), **{kernel: t}))
                     for kernel, tilings in SWEEP.items() for t in tilings] if args.sweep
                    else [(None, default_block_sizes(head_dim, device))])
      swept_rows = []
      for swept, blocks in candidates:
        try:
          measured = [row for row in rows(gpu, head_dim, blocks, args.shape)
                      if swept in (None, row["kernel"])]
        except jax.errors.JaxRuntimeError as error:  # e.g. more shared memory than the GPU has
          measured = [{"benchmark": "kernel_resources", "gpu": gpu, "head_dim": head_dim,
                       "kernel": swept, **dataclasses.asdict(getattr(blocks, swept)),
                       "error": str(error).splitlines()[0]}]
        for row in measured:
          print(json.dumps(row), flush=True)
        swept_rows.extend(measured)
      if args.sweep:
        for kernel in SWEEP:
          best = choose([row for row in swept_rows if row["kernel"] == kernel])
          print(json.dumps({**best, "benchmark": "kernel_resources_choice"}), flush=True)


if __name__ == "__main__":
  main()
