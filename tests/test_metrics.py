"""llama_jax.metrics: FLOPs, peak table, Table 15 energy and carbon, metrics files, loss plot."""

import json
import struct
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.image import imread
from tensorboardX.proto.event_pb2 import Event

from llama_jax import metrics
from llama_jax.model import ModelConfig


def _hand_count_flops(m: ModelConfig) -> int:
  d, f, layers = m.dim, m.ffn_dim, m.n_layers
  per_layer = 4 * d * d + 3 * d * f + 2 * d  # wq wk wv wo, w1 w2 w3, two RMSNorm scales
  non_embedding = layers * per_layer + d + d * m.vocab_size  # final norm, output projection
  return 6 * non_embedding + 6 * layers * m.context_length * d


@pytest.mark.parametrize("name", ["tiny", "7b"])
def test_flops_per_token_is_the_hand_count(load_config, name):
  config = ModelConfig.from_dict(load_config(name).model)
  assert metrics.flops_per_token(config) == _hand_count_flops(config)


def test_flops_per_token_7b_figure(load_config):
  # 6 x 6,607,343,616 non-embedding parameters + 6 x 32 x 2048 x 4096 (worked out by hand).
  config = ModelConfig.from_dict(load_config("7b").model)
  assert metrics.flops_per_token(config) == 41_254_674_432


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200 NVL", None),
    ("Tesla V100-SXM2-16GB", None),
])
def test_peak_flops_by_device_kind(kind, peak):
  device = types.SimpleNamespace(platform="gpu", device_kind=kind)
  assert metrics.peak_flops_per_second(device) == peak


def test_peak_flops_of_a_cpu_is_none():
  assert metrics.peak_flops_per_second(jax.devices()[0]) is None


def _clock(*readings):
  return iter(readings).__next__


# Paper Table 15, A100-80GB at 400 W: GPU-hours, MWh, tCO2eq (the paper prints whole numbers).
@pytest.mark.parametrize("gpu_hours, mwh, tco2", [
    (82_432, 36, 14), (135_168, 59, 23), (530_432, 233, 90), (1_022_362, 449, 173)])
def test_energy_reproduces_table_15(gpu_hours, mwh, tco2):
  meter = metrics.EnergyMeter(num_devices=2048, measure=False,
                              clock=_clock(0.0, gpu_hours * 3600 / 2048))
  totals = meter.update()
  assert totals["gpu_hours"] == pytest.approx(gpu_hours)
  assert abs(totals["energy_mwh"] - mwh) < 1
  assert abs(totals["tco2eq"] - tco2) < 1
  assert totals["energy_source"] == "nominal"


def test_energy_is_nominal_on_cpu_and_continues_from_its_state():
  meter = metrics.EnergyMeter(watts_per_device=300.0, clock=_clock(100.0, 110.0))
  first = meter.update()  # 8 simulated devices x 10 s
  assert first["energy_source"] == "nominal"
  assert first["gpu_hours"] == pytest.approx(80 / 3600)
  resumed = metrics.EnergyMeter(watts_per_device=300.0, state=meter.state(),
                                clock=_clock(0.0, 5.0))
  totals = resumed.update()
  assert totals["gpu_hours"] == pytest.approx(120 / 3600)
  assert totals["energy_mwh"] == pytest.approx(120 * 300.0 * 1.1 / 3.6e9)
  assert totals["tco2eq"] == pytest.approx(totals["energy_mwh"] * 0.385)


def _fake_pynvml(counters: dict, supported: bool = True) -> types.ModuleType:
  """NVML with energy counters in millijoules, handles being the ids they were opened by."""
  module = types.ModuleType("pynvml")
  module.nvmlInit = lambda: None
  module.nvmlDeviceGetHandleByIndex = lambda index: index
  module.nvmlDeviceGetHandleByUUID = lambda uuid: uuid

  def energy(handle):
    if not supported:
      raise RuntimeError("NVML: Not Supported")
    return counters[handle]

  module.nvmlDeviceGetTotalEnergyConsumption = energy
  return module


def test_energy_measured_through_nvml(monkeypatch):
  counters = {3: 5_000_000, "GPU-abc": 7_000_000}
  monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(counters))
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-abc")
  meter = metrics.EnergyMeter(num_devices=4, measure=True, clock=_clock(0.0, 10.0))
  counters[3] += 1_000_000
  counters["GPU-abc"] += 3_000_000
  totals = meter.update()
  # 4000 J on this host's 2 GPUs; the other host's 2 GPUs are taken to draw as much.
  assert totals["energy_source"] == "nvml"
  assert totals["energy_mwh"] == pytest.approx(8000 * 1.1 / 3.6e9)
  assert totals["gpu_hours"] == pytest.approx(40 / 3600)
  assert meter.state()["device_joules"] == pytest.approx(8000)


def test_energy_without_nvml_counters_falls_back_to_nominal(monkeypatch):
  monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml({0: 0}, supported=False))
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
  meter = metrics.EnergyMeter(num_devices=1, measure=True, clock=_clock(0.0, 3600.0))
  totals = meter.update()
  assert totals["energy_source"] == "nominal"
  assert totals["energy_mwh"] == pytest.approx(400 * 1.1 / 1e6)


def _events(directory) -> list[Event]:
  """The events of every TFRecord event file in a directory."""
  events = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset < len(data):  # record: length u64, its crc, payload, the payload's crc
      (length,) = struct.unpack_from("<Q", data, offset)
      events.append(Event.FromString(data[offset + 12:offset + 12 + length]))
      offset += 12 + length + 4
  return events


def _scalar_events(directory) -> list[tuple[str, int, float]]:
  return [(v.tag, e.step, v.simple_value) for e in _events(directory) for v in e.summary.value]


def test_metrics_writer_jsonl_and_tensorboard(tmp_path):
  writer = metrics.MetricsWriter(tmp_path)
  writer.write(1, {"loss": np.float32(2.5), "lr": jnp.float32(0.25), "skipped": False,
                   "mfu": None, "energy_source": "nominal"})
  writer.write(2, {"loss": 2.0, "lr": 0.5, "skipped": True, "mfu": None,
                   "energy_source": "nominal"})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "loss": 2.5, "lr": 0.25, "skipped": False, "mfu": None,
       "energy_source": "nominal"},
      {"step": 2, "loss": 2.0, "lr": 0.5, "skipped": True, "mfu": None,
       "energy_source": "nominal"},
  ]
  assert sorted(_scalar_events(tmp_path / "tensorboard")) == [
      ("loss", 1, 2.5), ("loss", 2, 2.0), ("lr", 1, 0.25), ("lr", 2, 0.5),
      ("skipped", 1, 0.0), ("skipped", 2, 1.0)]


def test_reopened_metrics_writer_appends(tmp_path):
  writer = metrics.MetricsWriter(tmp_path)
  writer.write(1, {"loss": 3.0})
  writer.write(2, {"loss": 2.0})
  writer.close()
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"step": 3, "lo')  # killed mid-line
  writer = metrics.MetricsWriter(tmp_path, purge_from_step=2)
  writer.write(2, {"loss": 1.5})
  writer.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 1.5}]
  assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
  # TensorBoard hides the first run's events from step 2 on when it meets this marker.
  assert any(e.step == 2 and e.session_log.status == e.session_log.START
             for e in _events(tmp_path / "tensorboard"))
  assert sorted(_scalar_events(tmp_path / "tensorboard")) == [
      ("loss", 1, 3.0), ("loss", 2, 1.5), ("loss", 2, 2.0)]


def test_read_metrics_keeps_the_last_record_of_each_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 10, "loss": 3.0}\n{"step": 20, "loss": 2.0}\n'
                  '{"step": 10, "loss": 2.9}\n{"step": 30, "loss": NaN}\n{"step": 40, "lo')
  records = metrics.read_metrics(path)
  assert [(r["step"], r["loss"]) for r in records[:2]] == [(10, 2.9), (20, 2.0)]
  assert records[2]["step"] == 30 and np.isnan(records[2]["loss"])
  assert len(records) == 3


def test_read_metrics_names_a_bad_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
    metrics.read_metrics(path)


def test_plot_loss(tmp_path):
  path = tmp_path / "metrics.jsonl"
  records = [{"step": s, "tokens": s * 1000, "loss": 10.0 / s} for s in range(1, 6)]
  records += [{"step": 3, "tokens": 3000, "loss": 9.0},  # replayed after a resume
              {"step": 6, "tokens": 6000, "eval_loss": 1.0}]  # no training loss: not drawn
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  tokens, loss = metrics.plot_loss(path, tmp_path / "loss.png")
  np.testing.assert_array_equal(tokens, [1000, 2000, 3000, 4000, 5000])
  np.testing.assert_array_equal(loss, [10.0, 5.0, 9.0, 2.5, 2.0])
  assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert imread(tmp_path / "loss.png").shape == (500, 800, 4)


def test_plot_loss_draws_the_learning_rate_on_a_second_axis(tmp_path):
  path = tmp_path / "metrics.jsonl"
  base = [{"step": s, "tokens": s * 1000, "loss": 10.0 / s} for s in range(1, 6)]
  path.write_text("".join(json.dumps(r) + "\n" for r in base))
  metrics.plot_loss(path, tmp_path / "loss.png")
  path.write_text("".join(json.dumps({**r, "lr": 1e-3 * r["step"]}) + "\n" for r in base))
  metrics.plot_loss(path, tmp_path / "loss_lr.png")
  without, with_lr = imread(tmp_path / "loss.png"), imread(tmp_path / "loss_lr.png")
  assert without.shape == with_lr.shape
  # The second axis adds an orange curve (tab:orange, #ff7f0e) that the plain plot lacks.
  def orange(image):
    rgb = (image[..., :3] * 255).round()
    return int((np.abs(rgb - [255, 127, 14]).sum(axis=-1) < 30).sum())
  assert orange(without) == 0 and orange(with_lr) > 100


def test_plot_loss_without_losses_is_an_error(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "tokens": 10}\n')
  with pytest.raises(ValueError, match="no record with both 'loss' and 'tokens'"):
    metrics.plot_loss(path, tmp_path / "loss.png")


def test_device_memory_in_use(monkeypatch):
  assert metrics.device_memory_in_use() is None  # the CPU backend reports no memory stats
  devices = [types.SimpleNamespace(memory_stats=lambda b=b: {"bytes_in_use": b, "peak": 0})
             for b in (100, 250)]
  monkeypatch.setattr(jax, "local_devices", lambda: devices)
  assert metrics.device_memory_in_use() == 350
