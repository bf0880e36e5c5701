"""What a training run reports: FLOPs and MFU, energy and carbon, metrics files and the loss plot.

- `flops_per_token` and `peak_flops_per_second` give model FLOPs utilisation (MFU).
- `EnergyMeter` counts GPU-hours, energy and emissions as the paper's Table 15 does (section 6).
- `MetricsWriter` appends one JSON line per record to `metrics.jsonl` and the same scalars to
  TensorBoard; `read_metrics` reads the lines back and `plot_loss` draws loss against tokens.
- `device_memory_in_use` sums what the accelerators report.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np
from absl import logging

from llama_jax.jsonl import read_jsonl
from llama_jax.model import ModelConfig, abstract_model, count_params

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def flops_per_token(config: ModelConfig) -> float:
  """Model FLOPs of one trained token: 6 x non-embedding parameters + 6 x layers x context x dim.

  6N is the forward (2N) and backward (4N) matmuls (Kaplan et al. 2020); the second term is the
  attention scores and their weighted sum over the full context, causal mask not discounted.
  The input embedding is a lookup, not a matmul, so its table is left out; the output projection
  is a matmul and counts. Parameters are counted from shapes, nothing is allocated.
  """
  model = abstract_model(config)
  non_embedding = count_params(model) - math.prod(model.embedding.shape)
  return 6.0 * non_embedding + 6.0 * config.n_layers * config.context_length * config.dim


# Dense (no sparsity) bfloat16 tensor-core peaks from NVIDIA's A100, H100 and H200 data sheets,
# which print twice these figures "with sparsity". Searched in `device_kind`, which names the part:
# "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H200".
# Other parts (the NVL cards among them) are not listed: their MFU is reported as None.
_PEAK_BF16_FLOPS = (
    (re.compile(r"\bA100\b"), 312e12),
    (re.compile(r"\bH100\b.*\b(SXM|HBM3)"), 989e12),
    (re.compile(r"\bH100\b.*\bPCIe\b", re.IGNORECASE), 756e12),
    (re.compile(r"\bH200\b(?!.*\bNVL\b)"), 989e12),
)


def peak_flops_per_second(device: jax.Device) -> float | None:
  """Dense bfloat16 peak of one device, or None for a CPU or a kind not in the table."""
  if device.platform != "gpu":
    return None
  for pattern, flops in _PEAK_BF16_FLOPS:
    if pattern.search(device.device_kind):
      return flops
  return None


def device_memory_in_use() -> int | None:
  """Bytes in use summed over this process's devices; None where the backend says nothing (CPU)."""
  stats = [device.memory_stats() for device in jax.local_devices()]
  if any(s is None or "bytes_in_use" not in s for s in stats):
    return None
  return sum(s["bytes_in_use"] for s in stats)


class _NvmlEnergy:
  """Energy counters of this host's GPUs (NVML, millijoules since the driver loaded)."""

  def __init__(self, pynvml, handles: list):
    self.pynvml = pynvml
    self.handles = handles

  @classmethod
  def open(cls, device_count: int) -> _NvmlEnergy | None:
    try:
      import pynvml  # nvidia-ml-py: imports anywhere, but nvmlInit needs the NVIDIA driver

      pynvml.nvmlInit()
      # NVML numbers all GPUs of the host; CUDA_VISIBLE_DEVICES (indices or UUIDs) says which of
      # them JAX's devices are. Energy is summed, so their order does not matter.
      visible = os.environ.get("CUDA_VISIBLE_DEVICES")
      ids = visible.split(",")[:device_count] if visible else range(device_count)
      handles = [pynvml.nvmlDeviceGetHandleByUUID(i) if str(i).startswith(("GPU-", "MIG-"))
                 else pynvml.nvmlDeviceGetHandleByIndex(int(i)) for i in ids]
      meter = cls(pynvml, handles)
      meter.millijoules()  # raises NVMLError_NotSupported on GPUs before Volta
      return meter
    except Exception as error:  # ImportError, NVMLError and its many subclasses
      logging.warning("NVML energy counters unavailable (%s); using the nominal power", error)
      return None

  def millijoules(self) -> int:
    return sum(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles)


class EnergyMeter:
  """GPU-hours, energy (MWh) and emissions (tCO2eq) of a run so far, as the paper's Table 15.

  GPU-hours are devices x wall hours between `update` calls. Energy is what NVML measures on this
  host's GPUs, scaled to all `num_devices` (other hosts are taken to draw as much per device),
  or `watts_per_device` x GPU-hours where there is nothing to measure; then times the data
  centre's PUE. Emissions are MWh x carbon intensity. Defaults are the paper's: 400 W per
  A100-80GB, PUE 1.1, 0.385 tCO2eq/MWh (US average).

  `state()` is what a checkpoint keeps; a meter built with it continues the totals (the time
  between the kill and the restart is not counted).
  """

  def __init__(self, watts_per_device: float = 400.0, pue: float = 1.1,
               tco2_per_mwh: float = 0.385, *, num_devices: int | None = None,
               measure: bool | None = None, state: Mapping[str, float] | None = None,
               clock: Callable[[], float] = time.monotonic):
    """measure: read NVML (None: when this process's devices are GPUs). clock: seconds."""
    self.watts_per_device = watts_per_device
    self.pue = pue
    self.tco2_per_mwh = tco2_per_mwh
    self.num_devices = num_devices or jax.device_count()
    self.device_seconds = float(state["device_seconds"]) if state else 0.0
    self.device_joules = float(state["device_joules"]) if state else 0.0
    if measure is None:
      measure = jax.local_devices()[0].platform == "gpu"
    self._nvml = _NvmlEnergy.open(jax.local_device_count()) if measure else None
    self._clock = clock
    self._last_seconds = clock()
    self._last_millijoules = self._nvml.millijoules() if self._nvml else 0

  def update(self) -> dict[str, float | str]:
    """Adds the time (and energy) since the last call; returns the totals so far."""
    now = self._clock()
    seconds = now - self._last_seconds
    self._last_seconds = now
    self.device_seconds += seconds * self.num_devices
    if self._nvml:
      millijoules = self._nvml.millijoules()
      local_joules = (millijoules - self._last_millijoules) / 1e3
      self._last_millijoules = millijoules
      self.device_joules += local_joules * self.num_devices / len(self._nvml.handles)
    else:
      self.device_joules += seconds * self.num_devices * self.watts_per_device
    energy_mwh = self.device_joules * self.pue / 3.6e9
    return {"gpu_hours": self.device_seconds / 3600, "energy_mwh": energy_mwh,
            "tco2eq": energy_mwh * self.tco2_per_mwh,
            "energy_source": "nvml" if self._nvml else "nominal"}

  def state(self) -> dict[str, float]:
    return {"device_seconds": self.device_seconds, "device_joules": self.device_joules}


def _plain(value):
  """jax and numpy scalars as Python numbers, so json and TensorBoard take them."""
  return value.item() if isinstance(value, np.generic | jax.Array) else value


class MetricsWriter:
  """Records to `workdir/metrics.jsonl` (one JSON object a line) and `workdir/tensorboard`.

  Every record is flushed when written, so a killed run keeps all it wrote. A reopened writer
  appends. A resumed run passes `purge_from_step` (the first step it writes again) so that
  TensorBoard hides the old run's records from that step on; `read_metrics` does the same for the
  JSON lines by keeping the last record of each step. Non-finite numbers are written as JSON's
  NaN / Infinity extensions, which Python's json reads.
  """

  def __init__(self, workdir: str | Path, *, purge_from_step: int | None = None):
    from tensorboardX import SummaryWriter  # not needed by the processes that do not write

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.path = workdir / METRICS_FILE
    _drop_unfinished_line(self.path)
    self._jsonl = self.path.open("a", encoding="utf-8")
    # tensorboardX names event files by the second and opens them with "wb": without a finer
    # suffix, a writer reopened within the same second would erase the previous one's events.
    self._tensorboard = SummaryWriter(str(workdir / TENSORBOARD_DIR), purge_step=purge_from_step,
                                      filename_suffix=f".{time.time_ns()}")

  def write(self, step: int, metrics: Mapping[str, object]) -> None:
    """One record: every value to JSON, the numbers (bools as 0/1) to TensorBoard too."""
    record = {"step": step, **{name: _plain(value) for name, value in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for name, value in record.items():
      if name != "step" and isinstance(value, numbers.Real):
        self._tensorboard.add_scalar(name, float(value), step)
    self._tensorboard.flush()

  def close(self) -> None:
    self._jsonl.close()
    self._tensorboard.close()


def _drop_unfinished_line(path: Path) -> None:
  """Cuts a last line left without its newline by a kill, which appending would corrupt."""
  if not path.exists():
    return
  with path.open("rb+") as f:
    data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):
      logging.warning("%s: dropping an unfinished last line %r", path, data[end:])
      f.truncate(end)


def read_metrics(path: str | Path) -> list[dict]:
  """The records of a metrics.jsonl in step order, the last record of each step winning.

  A resumed or rolled-back run writes some steps again; the later record is the one that led to
  the final model. A last line without its newline (a writer caught mid-line) is ignored.
  """
  by_step = {}
  for where, record in read_jsonl(path, partial_last_line=True):
    if not isinstance(record.get("step"), int):
      raise ValueError(f"{where}: a metrics record has an integer `step`")
    by_step[record["step"]] = record
  return [by_step[step] for step in sorted(by_step)]


def plot_loss(metrics_path: str | Path, png_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
  """Draws training loss against tokens seen into a PNG, with the learning rate on a second axis
  where the records have it; returns the plotted (tokens, loss)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  records = [r for r in read_metrics(metrics_path)
             if r.get("loss") is not None and r.get("tokens") is not None]
  if not records:
    raise ValueError(f"{metrics_path} has no record with both 'loss' and 'tokens'")
  tokens = np.array([r["tokens"] for r in records], dtype=np.float64)
  loss = np.array([r["loss"] for r in records], dtype=np.float64)
  # A Figure on the Agg canvas, not pyplot: no GUI backend and no global state in a training job.
  figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  axes.plot(tokens, loss, linewidth=1)
  axes.set_xlabel("tokens seen")
  axes.set_ylabel("training loss")
  axes.grid(alpha=0.3)
  rates = [(r["tokens"], r["lr"]) for r in records if r.get("lr") is not None]
  if rates:
    lr_axes = axes.twinx()
    lr_axes.plot(*zip(*rates, strict=True), color="tab:orange", linewidth=1, linestyle="--")
    lr_axes.set_ylabel("learning rate (dashed)", color="tab:orange")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
  figure.savefig(png_path)
  return tokens, loss
