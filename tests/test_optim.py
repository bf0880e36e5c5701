"""The paper's optimizer: schedule values by the formula, updates against a NumPy AdamW."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llama_jax.config import total_steps
from llama_jax.model import Llama, ModelConfig
from llama_jax.optim import decay_mask, learning_rate_schedule, make_optimizer

OPTIM = {"peak_lr": 3e-4, "b1": 0.9, "b2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
         "grad_clip_norm": 1.0, "warmup_steps": 2000, "final_lr_ratio": 0.1}


def _paper_lr(step, steps, peak=3e-4, warmup=2000, final=0.1):
  """Linear warm-up from 0, then cosine from the peak down to final x peak at `steps`."""
  if step < warmup:
    return peak * step / warmup
  progress = min(1.0, (step - warmup) / (steps - warmup))
  return final * peak + (peak - final * peak) * 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_follows_the_formula():
  steps = 250_000  # 7B: 1T tokens / 4M tokens per step
  schedule = learning_rate_schedule(OPTIM, steps)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(1000)), 1.5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(2000)), 3e-4, rtol=1e-6)
  mid = 2000 + (steps - 2000) // 2
  np.testing.assert_allclose(float(schedule(mid)), 0.55 * 3e-4, rtol=1e-5)  # halfway down
  np.testing.assert_allclose(float(schedule(steps)), 3e-5, rtol=1e-6)
  for step in (17, 2500, 100_000, 249_999):
    np.testing.assert_allclose(float(schedule(step)), _paper_lr(step, steps), rtol=1e-5)


def test_total_steps_from_tokens(load_config):
  assert total_steps(load_config("7b")) == round(1.0e12 / (2048 * 2048))
  assert total_steps(load_config("65b")) == round(1.4e12 / (2048 * 2048))


def test_warmup_longer_than_the_run_is_refused():
  with pytest.raises(ValueError, match="warmup_steps=2000 must be fewer"):
    learning_rate_schedule(OPTIM, 1000)


def _numpy_adamw(optim, params, grads_per_step, steps):
  """Reference AdamW (Loshchilov & Hutter) with global-norm clipping and no decay on 'scale'."""
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  params = {k: x.copy() for k, x in params.items()}
  for t, grads in enumerate(grads_per_step):
    norm = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    clip = min(1.0, optim["grad_clip_norm"] / norm)
    lr = _paper_lr(t, steps, optim["peak_lr"], optim["warmup_steps"], optim["final_lr_ratio"])
    for k in params:
      g = grads[k] * clip
      m[k] = 0.9 * m[k] + 0.1 * g
      v[k] = 0.95 * v[k] + 0.05 * g * g
      m_hat, v_hat = m[k] / (1 - 0.9 ** (t + 1)), v[k] / (1 - 0.95 ** (t + 1))
      decay = 0.0 if k == "scale" else optim["weight_decay"]
      params[k] = params[k] - lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * params[k])
  return params


def test_updates_match_a_numpy_adamw():
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(8, 4)).astype(np.float32),
            "scale": np.ones(4, np.float32)}
  # Large gradients (clipped) and small ones (not clipped), during warm-up and after it.
  grads_per_step = [{k: (rng.normal(size=p.shape) * s).astype(np.float32)
                     for k, p in params.items()} for s in (3.0, 0.01, 2.0, 0.05, 0.2)]
  optim = {**OPTIM, "warmup_steps": 2}
  optimizer = make_optimizer(optim, steps=10)
  state = optimizer.init(params)
  ours = jax.tree.map(jnp.asarray, params)
  for grads in grads_per_step:
    updates, state = optimizer.update(jax.tree.map(jnp.asarray, grads), state, ours)
    ours = jax.tree.map(lambda p, u: p + u, ours, updates)
  expected = _numpy_adamw(optim, params, grads_per_step, steps=10)
  for k in params:
    np.testing.assert_allclose(np.asarray(ours[k]), expected[k], rtol=1e-5, atol=1e-7)


def test_only_norm_scales_escape_weight_decay(load_config):
  model = nnx.eval_shape(lambda: Llama(ModelConfig.from_dict(load_config("tiny").model),
                                       rngs=nnx.Rngs(0)))
  mask = decay_mask(nnx.state(model, nnx.Param))
  flat = {jax.tree_util.keystr(path): decayed
          for path, decayed in jax.tree_util.tree_leaves_with_path(mask)}
  undecayed = sorted(path for path, decayed in flat.items() if not decayed)
  assert undecayed == sorted(path for path in flat if "scale" in path)
  assert len(undecayed) == 3  # attention_norm and ffn_norm (stacked), and the final norm
