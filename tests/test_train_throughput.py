"""benchmarks.train_throughput: the timed rows on the CPU, and the static profile of the step
compiled for an H100 (no GPU needed; nothing here asserts a time)."""

import json

import pytest

from benchmarks import train_throughput
from llama_jax.metrics import flops_per_token
from llama_jax.model import ModelConfig

# A pared-down tiny config: the vocabulary is most of tiny's step, and none of these tests need it.
SMALL = ["--config=configs/tiny.py", "--config.model.vocab_size=1024"]


def _rows(capsys) -> list[dict]:
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_measures_xla_and_skips_cudnn_on_cpu(capsys):
  train_throughput.main([*SMALL, "--steps=2", "--remat=save_linear,full", "--attention=xla,cudnn",
                         "--devices=2", "--batch_size=2"])
  rows = _rows(capsys)
  assert [(r["remat"], r["attention"]) for r in rows] == [
      ("save_linear", "xla"), ("save_linear", "cudnn"), ("full", "xla"), ("full", "cudnn")]
  for row in rows:
    assert row["benchmark"] == "train_throughput"
    assert (row["batch_size"], row["seq"], row["devices"], row["backend"]) == (2, 256, 2, "cpu")
    if row["attention"] == "cudnn":
      assert "skipped" in row and "cudnn" in row["skipped"]
      continue
    assert "skipped" not in row
    assert row["tokens_per_second_per_device"] > 0
    assert row["step_seconds"] > 0 and row["compile_seconds"] > 0
    assert row["mfu"] is None  # no known peak for a CPU
    assert row["memory_source"] == "memory_analysis" and row["peak_memory_bytes"] > 0
    assert row["loss"] == pytest.approx(6.93, abs=0.2)  # ln(1024): random init, random tokens


def test_pallas_is_skipped_off_gpu(capsys):
  train_throughput.main([*SMALL, "--steps=1", "--remat=none", "--attention=pallas"])
  (row,) = _rows(capsys)
  assert "interpret" in row["skipped"]


def test_rejects_unknown_choices_and_overrides():
  with pytest.raises(SystemExit):
    train_throughput.main([*SMALL, "--remat=sometimes"])
  with pytest.raises(SystemExit):
    train_throughput.main([*SMALL, "--config.model.no_such_key=1"])
  with pytest.raises(SystemExit):  # 3 sequences do not split over 2 devices
    train_throughput.main([*SMALL, "--devices=2", "--batch_size=3"])


def test_profile_of_the_h100_step(capsys):
  layers, batch = 2, 2
  train_throughput.main([*SMALL, f"--config.model.n_layers={layers}", "--profile=h100",
                         f"--batch_size={batch}", "--attention=pallas"])
  rows = _rows(capsys)
  *kernels, summary = rows
  assert summary["summary"] and summary["estimate"] and "no GPU" in summary["note"]
  assert all(not r.get("summary") for r in kernels)
  names = {r["kernel"] for r in kernels}
  assert {"flash_attention_forward", "flash_attention_dq", "flash_attention_dkv"} <= names
  assert {r["pass"] for r in kernels} == {"forward", "backward"}
  assert all(r["launches_per_step"] == layers for r in kernels)
  assert all(r["flops"] >= 0 and r["bytes"] > 0 and r["time_bound_us"] > 0 for r in kernels)
  matmuls = [r for r in kernels if r["kind"] == "matmul"]
  assert matmuls and all(r["flops"] > 0 for r in matmuls)
  # One layer's seven projections, forward: 2 x tokens x (4 dim^2 + 3 dim ffn).
  dim, ffn, tokens = 128, 512, batch * 256
  forward = sum(r["flops"] for r in matmuls if r["pass"] == "forward")
  assert forward == 2 * tokens * (4 * dim * dim + 3 * dim * ffn)
  # The whole step's matmul FLOPs against the analytic count.
  config = ModelConfig(vocab_size=1024, dim=dim, n_layers=layers, n_heads=4, ffn_dim=ffn,
                       context_length=256)
  model_flops = flops_per_token(config) * tokens
  assert summary["model_flops_per_step"] == model_flops
  assert summary["matmul_flops"] == pytest.approx(model_flops, rel=0.25)
  assert summary["hlo_to_model_flops"] == pytest.approx(summary["matmul_flops"] / model_flops,
                                                        abs=1e-3)
  # The bounds follow from the summed per-kernel bound by their formulas (an estimate, no timing).
  assert summary["mfu_bound"] == pytest.approx(
      model_flops / summary["step_seconds_bound"] / summary["peak_flops_per_second"], rel=1e-2)
  assert summary["tokens_per_second_bound"] == pytest.approx(
      batch * 256 / summary["step_seconds_bound"], rel=1e-3)


# A hand-written program: a loop of 3 trips whose body runs a GEMM fusion, saves its result into a
# stacked buffer in place, and runs a Pallas dq kernel.
HLO = """HloModule test

%fused_dot (p0: bf16[4,8], p1: bf16[8,16]) -> bf16[4,16] {
  %p0 = bf16[4,8]{1,0} parameter(0)
  %p1 = bf16[8,16]{1,0} parameter(1)
  ROOT %dot.1 = bf16[4,16]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_save (p0: bf16[3,4,16], p1: s32[], p2: bf16[4,16]) -> bf16[3,4,16] {
  %p0 = bf16[3,4,16]{2,1,0} parameter(0)
  %p2 = bf16[4,16]{1,0} parameter(2)
  %bitcast.1 = bf16[1,4,16]{2,1,0} bitcast(%p2)
  %p1 = s32[] parameter(1)
  %c = s32[] constant(0)
  ROOT %dus = bf16[3,4,16]{2,1,0} dynamic-update-slice(%p0, %bitcast.1, %p1, %c, %c)
}

%fused_zeros () -> bf16[3,4,16] {
  %z = bf16[] constant(0)
  ROOT %b = bf16[3,4,16]{2,1,0} broadcast(%z), dimensions={}
}

%body (arg: (s32[], bf16[4,8], bf16[3,4,16], bf16[8,16], bf16[2,64,4,32])) -> (s32[], bf16[4,8], bf16[3,4,16], bf16[8,16], bf16[2,64,4,32]) {
  %arg = (s32[], bf16[4,8]{1,0}, bf16[3,4,16]{2,1,0}, bf16[8,16]{1,0}, /*index=4*/bf16[2,64,4,32]{3,2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%arg), index=0
  %x = bf16[4,8]{1,0} get-tuple-element(%arg), index=1
  %stack = bf16[3,4,16]{2,1,0} get-tuple-element(%arg), index=2
  %w = bf16[8,16]{1,0} get-tuple-element(%arg), index=3
  %q = bf16[2,64,4,32]{3,2,1,0} get-tuple-element(%arg), index=4
  %gemm = bf16[4,16]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(f)/jvp()/while/body/closed_call/btd,df->btf/dot_general"}
  %save = bf16[3,4,16]{2,1,0} fusion(%stack, %i, %gemm), kind=kLoop, calls=%fused_save
  %dq = bf16[2,64,4,32]{3,2,1,0} custom-call(%q, %q, %q), custom_call_target="__gpu$xla.gpu.triton", backend_config={debug = false, name = "flash_attention_dq", num_warps = 4 : i32}
  ROOT %t = (s32[], bf16[4,8]{1,0}, bf16[3,4,16]{2,1,0}, bf16[8,16]{1,0}, /*index=4*/bf16[2,64,4,32]{3,2,1,0}) tuple(%i, %x, %save, %w, %dq)
}

%cond (arg: (s32[], bf16[4,8], bf16[3,4,16], bf16[8,16], bf16[2,64,4,32])) -> pred[] {
  %arg = (s32[], bf16[4,8]{1,0}, bf16[3,4,16]{2,1,0}, bf16[8,16]{1,0}, /*index=4*/bf16[2,64,4,32]{3,2,1,0}) parameter(0)
  ROOT %p = pred[] constant(true)
}

ENTRY %main (x: bf16[4,8], w: bf16[8,16], q: bf16[2,64,4,32]) -> bf16[3,4,16] {
  %x = bf16[4,8]{1,0} parameter(0)
  %w = bf16[8,16]{1,0} parameter(1)
  %q = bf16[2,64,4,32]{3,2,1,0} parameter(2)
  %zeros = bf16[3,4,16]{2,1,0} fusion(), kind=kLoop, calls=%fused_zeros
  %zero = s32[] constant(0)
  %init = (s32[], bf16[4,8]{1,0}, bf16[3,4,16]{2,1,0}, bf16[8,16]{1,0}, /*index=4*/bf16[2,64,4,32]{3,2,1,0}) tuple(%zero, %x, %zeros, %w, %q)
  %while = (s32[], bf16[4,8]{1,0}, bf16[3,4,16]{2,1,0}, bf16[8,16]{1,0}, /*index=4*/bf16[2,64,4,32]{3,2,1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="jit(f)/transpose(jvp())/while"}, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %out = bf16[3,4,16]{2,1,0} get-tuple-element(%while), index=2
}
"""  # noqa: E501 (an HLO instruction is one line, however long)


def test_step_kernels_of_a_hand_written_program():
  kernels = {k.hlo: k for k in train_throughput.step_kernels(HLO)}
  assert set(kernels) == {"zeros", "gemm", "save", "dq"}
  zeros, gemm, save, dq = (kernels[n] for n in ("zeros", "gemm", "save", "dq"))
  assert (zeros.pass_, zeros.count, zeros.kind) == ("outside", 1, "elementwise")
  assert (zeros.flops, zeros.bytes) == (3 * 4 * 16, 3 * 4 * 16 * 2)
  assert all((k.pass_, k.count) == ("backward", 3) for k in (gemm, save, dq))
  assert (gemm.kind, gemm.op) == ("matmul", "btd,df->btf/dot_general")
  assert gemm.flops == 2 * 4 * 16 * 8
  assert gemm.bytes == (4 * 8 + 8 * 16 + 4 * 16) * 2
  # In place: the index and the update are read and the update written, not the whole stack.
  assert save.bytes == 4 + 2 * (4 * 16 * 2) and save.flops == 4 * 16
  assert (dq.name, dq.kind) == ("flash_attention_dq", "attention")
  forward = 4 * 2 * 4 * 64 * 64 * 32 / 2  # causal: 4 b h s^2 d / 2
  assert dq.flops == 1.5 * forward
  assert dq.bytes == 4 * 2 * 64 * 4 * 32 * 2


def test_shape_sizes():
  assert train_throughput.shape_bytes("(s32[], bf16[2,3]{1,0}, /*index=2*/pred[4], f32[])") == 24
  assert train_throughput.shape_elements("f32[2,3,4]{2,1,0}") == 24
