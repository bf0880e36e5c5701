"""The paper's optimizer (Touvron et al. 2023, section 2.3), built from optax.

AdamW with b1 = 0.9, b2 = 0.95, weight decay 0.1 and gradients clipped to global norm 1.0; the
learning rate warms up linearly over 2000 steps and then follows a cosine down to 10% of its peak.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import optax


def learning_rate_schedule(optim: Mapping, steps: int) -> optax.Schedule:
  """0 -> peak linearly over `warmup_steps`, then cosine to `final_lr_ratio` x peak at `steps`."""
  if optim["warmup_steps"] >= steps:
    raise ValueError(f"optim.warmup_steps={optim['warmup_steps']} must be fewer than the run's "
                     f"{steps} steps")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim["peak_lr"], warmup_steps=optim["warmup_steps"],
      decay_steps=steps, end_value=optim["final_lr_ratio"] * optim["peak_lr"])


def decay_mask(params):
  """True for the weight matrices, False for the RMSNorm scales (not decayed)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(key, "key", None) == "scale" for key in path), params)


def make_optimizer(optim: Mapping, steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(optim["grad_clip_norm"]),
      optax.adamw(learning_rate_schedule(optim, steps), b1=optim["b1"], b2=optim["b2"],
                  eps=optim["eps"], weight_decay=optim["weight_decay"], mask=decay_mask),
  )
