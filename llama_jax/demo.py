"""`make demo`: builds the model of a config and runs it once; shows the paper's sizes.

python -m llama_jax.demo --config=configs/tiny.py [--config.KEY=VALUE ...]
"""

import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from llama_jax.config import load_config_file, parse_flags
from llama_jax.model import Llama, ModelConfig, abstract_model, count_params

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/tiny.py.")
flags.mark_flags_as_required(["config"])

# Parameter counts the paper reports (Table 2), beside the sizes our configs build.
_PAPER_SIZES = {"7b": 6.7e9, "13b": 13.0e9, "33b": 32.5e9, "65b": 65.2e9}


def main(argv):
  del argv
  configs_dir = Path(__file__).resolve().parent.parent / "configs"
  print("Paper sizes (parameters counted with jax.eval_shape, nothing allocated):")
  for name, paper in _PAPER_SIZES.items():
    size_config = ModelConfig.from_dict(load_config_file(configs_dir / f"{name}.py").model)
    ours = count_params(abstract_model(size_config))
    print(f"  {name:>4}: {ours / 1e9:6.2f}B  (paper: {paper / 1e9:.1f}B)")

  try:
    config = ModelConfig.from_dict(_CONFIG.value.model)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  model = Llama(config, rngs=nnx.Rngs(_CONFIG.value.train.seed))
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  print(f"\n{config_file}: dim {config.dim}, {config.n_heads} heads, {config.n_layers} layers "
        f"(scanned), {count_params(model):,} parameters, remat={config.remat}, "
        f"compute {config.dtype}")

  graphdef, state = nnx.split(model)

  @jax.jit
  def next_token_loss(state, tokens):
    logits = nnx.merge(graphdef, state)(tokens[:, :-1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1).mean()

  tokens = jax.random.randint(jax.random.key(0), (4, config.context_length), 0, config.vocab_size)
  start = time.perf_counter()
  loss = float(next_token_loss(state, tokens))
  print(f"Forward pass on random tokens {tokens.shape}: next-token loss {loss:.3f} "
        f"(uniform guess: ln {config.vocab_size} = {math.log(config.vocab_size):.3f}), "
        f"{time.perf_counter() - start:.1f}s including compilation")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
