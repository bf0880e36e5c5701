"""from_pretrained against Hugging Face transformers' LlamaForCausalLM on the CPU, and the
conversions between Meta's release, Hugging Face directories and our orbax runs."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from llama_jax import from_pretrained
from llama_jax.convert import _host_params, hf_to_orbax, main, meta_to_orbax, orbax_to_hf
from llama_jax.formats.hf import model_config_from_hf
from llama_jax.formats.meta import MetaCheckpoint
from llama_jax.inference import load_model
from llama_jax.model import ModelConfig, abstract_model

META_TOKENIZER = Path(__file__).parent / "data" / "llama-tokenizer" / "tokenizer.model"

# A small random LLaMA; eps and theta differ from the defaults so that reading them is tested.
# The vocabulary is even so that Meta's two-rank split of the output rows divides it.
HF_CONFIG = dict(vocab_size=102, hidden_size=64, intermediate_size=176, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                 rms_norm_eps=1e-5, rope_theta=20000.0, tie_word_embeddings=False,
                 initializer_range=0.1)  # larger than the default 0.02: logits of order 1


@pytest.fixture(scope="module")
def hf_model():
  torch.manual_seed(0)
  model = LlamaForCausalLM(LlamaConfig(**HF_CONFIG)).eval()
  # Norm scales start at 1; randomise them so a missed or swapped norm shows in the logits.
  with torch.no_grad():
    for name, param in model.named_parameters():
      if name.endswith("norm.weight"):
        param.uniform_(0.5, 1.5)
  return model


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def _tokens(length=48):
  return np.random.default_rng(0).integers(0, HF_CONFIG["vocab_size"], (2, length), np.int32)


def test_logits_match_transformers_float32(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  model, config = from_pretrained(tmp_path, dtype=jnp.float32)
  assert (config.dim, config.n_layers, config.n_heads, config.ffn_dim) == (64, 3, 4, 176)
  assert (config.norm_eps, config.rope_theta, config.dtype) == (1e-5, 20000.0, "float32")
  tokens = _tokens()
  logits = model(jnp.asarray(tokens))
  assert logits.dtype == jnp.float32
  assert np.max(np.abs(np.asarray(logits) - _hf_logits(hf_model, tokens))) <= 1e-4


def test_bfloat16_sharded_checkpoint_loads(hf_model, tmp_path):
  bf16 = LlamaForCausalLM(LlamaConfig(**HF_CONFIG))
  bf16.load_state_dict(hf_model.state_dict())
  bf16.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="100KB")
  assert len(list(tmp_path.glob("*.safetensors"))) > 1
  model, config = from_pretrained(tmp_path, dtype="float32")
  # The reference is the same bfloat16 weights in a fresh float32 model (casting the bfloat16
  # model back would keep its RoPE frequencies rounded to bfloat16).
  reference_model = LlamaForCausalLM(LlamaConfig(**HF_CONFIG)).eval()
  reference_model.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
  tokens = _tokens()
  reference = _hf_logits(reference_model, tokens)
  assert np.max(np.abs(np.asarray(model(jnp.asarray(tokens))) - reference)) <= 1e-4


def test_default_compute_dtype_is_bfloat16(hf_model, tmp_path):
  hf_model.save_pretrained(tmp_path)
  model, config = from_pretrained(tmp_path)
  assert config.dtype == "bfloat16"
  tokens = _tokens()
  logits = np.asarray(model(jnp.asarray(tokens)))
  assert logits.dtype == np.float32
  assert np.max(np.abs(logits - _hf_logits(hf_model, tokens))) < 0.1


def _config_dir(tmp_path, hf_model, **changes):
  hf_model.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config.update(changes)
  (tmp_path / "config.json").write_text(json.dumps(config))
  return tmp_path


@pytest.mark.parametrize("changes, message", [
    ({"num_key_value_heads": 2}, "grouped-query attention"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope scaling"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope scaling"),
    ({"tie_word_embeddings": True}, "tied input and output embeddings"),
    ({"attention_bias": True}, r"biases \(attention_bias=true\)"),
    ({"mlp_bias": True}, r"biases \(mlp_bias=true\)"),
    ({"model_type": "mistral"}, "model_type is 'mistral'"),
])
def test_unsupported_configs_are_refused(hf_model, tmp_path, changes, message):
  directory = _config_dir(tmp_path, hf_model, **changes)
  with pytest.raises(ValueError, match=f"config.json: unsupported.*{message}"):
    from_pretrained(directory)


def test_missing_files_and_tensors_are_reported(hf_model, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    from_pretrained(tmp_path / "nowhere")
  hf_model.save_pretrained(tmp_path)
  (tmp_path / "model.safetensors").rename(tmp_path / "weights.bin")
  with pytest.raises(FileNotFoundError, match=r"no \*.safetensors files"):
    from_pretrained(tmp_path)


def test_wrong_tensors_are_reported(hf_model, tmp_path):
  from safetensors.torch import save_file

  state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
  hf_model.config.save_pretrained(tmp_path)
  save_file({k: v for k, v in state.items() if k != "model.norm.weight"},
            tmp_path / "model.safetensors")
  with pytest.raises(KeyError, match="tensor 'model.norm.weight' is missing"):
    from_pretrained(tmp_path)
  save_file({**state, "model.extra.weight": torch.zeros(3)}, tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match=r"1 tensors this model has no place for.*model.extra"):
    from_pretrained(tmp_path)
  save_file({**state, "model.norm.weight": torch.zeros(5)}, tmp_path / "model.safetensors")
  with pytest.raises(ValueError, match=r"tensor 'model.norm.weight' has shape \(5,\), but "
                                       r"\['norm'\]\['scale'\] of this model"):
    from_pretrained(tmp_path)


def test_config_json_from_transformers_4_is_read():
  # transformers 4.x writes rope_theta at the top level; 5.x nests it in rope_parameters.
  config = model_config_from_hf({
      "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
      "num_hidden_layers": 32, "num_attention_heads": 32, "rope_theta": 500000.0,
      "rms_norm_eps": 1e-5, "rope_scaling": None, "max_position_embeddings": 4096})
  assert (config.dim, config.ffn_dim, config.n_layers, config.n_heads) == (4096, 11008, 32, 32)
  assert (config.rope_theta, config.norm_eps, config.context_length) == (500000.0, 1e-5, 4096)


# --- conversions -------------------------------------------------------------------------------

# The tokenizer (32000 pieces) is Meta's; this model's 102 embeddings draw a warning, not an error.
pytestmark = pytest.mark.filterwarnings("ignore:.*pieces but the model only")

# Meta's name and model-parallel split dim (fairscale: column-parallel layers split their output
# rows, row-parallel ones their input columns, the embedding its embedding dim; None: replicated)
# for each Hugging Face tensor, written out here independently of llama_jax.formats.layout's table.
_META = {"model.embed_tokens.weight": ("tok_embeddings.weight", 1),
         "model.norm.weight": ("norm.weight", None),
         "lm_head.weight": ("output.weight", 0)}
_META_LAYER = {"self_attn.q_proj": ("attention.wq", 0), "self_attn.k_proj": ("attention.wk", 0),
               "self_attn.v_proj": ("attention.wv", 0), "self_attn.o_proj": ("attention.wo", 1),
               "mlp.gate_proj": ("feed_forward.w1", 0), "mlp.up_proj": ("feed_forward.w3", 0),
               "mlp.down_proj": ("feed_forward.w2", 1), "input_layernorm": ("attention_norm", None),
               "post_attention_layernorm": ("ffn_norm", None)}
META_PARAMS = {"dim": 64, "multiple_of": 16, "n_heads": 4, "n_layers": 3, "norm_eps": 1e-5,
               "vocab_size": -1, "rope_theta": 20000.0}  # 2/3 * 4 * 64 = 170 -> 176


def _meta_name(hf_name):
  if hf_name in _META:
    return _META[hf_name]
  layer, module = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name).groups()
  name, split = _META_LAYER[module]
  return f"layers.{layer}.{name}.weight", split


def _meta_rows(w, n_heads):
  """Hugging Face's q/k rows (the two halves of each head) back in Meta's interleaved order."""
  rows, dim = w.shape
  return w.view(n_heads, 2, rows // n_heads // 2, dim).transpose(1, 2).reshape(rows, dim)


def _write_meta(directory, hf_model, ranks=2, params=None):
  """hf_model as Meta's release would hold it: params.json and one file per model-parallel rank,
  with tokenizer.model in the parent directory."""
  directory.mkdir(parents=True)
  shards = [{"rope.freqs": torch.ones(8)} for _ in range(ranks)]  # derived: ignored
  for hf_name, w in hf_model.state_dict().items():
    name, split = _meta_name(hf_name)
    if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
      w = _meta_rows(w, HF_CONFIG["num_attention_heads"])
    pieces = [w] * ranks if split is None else torch.chunk(w, ranks, dim=split)
    for shard, piece in zip(shards, pieces, strict=True):
      shard[name] = piece.clone()  # a view would save the whole tensor in every file
  for rank, shard in enumerate(shards):
    torch.save(shard, directory / f"consolidated.{rank:02d}.pth")
  (directory / "params.json").write_text(json.dumps(params or META_PARAMS))
  shutil.copy(META_TOKENIZER, directory.parent / "tokenizer.model")
  return directory


@pytest.fixture(scope="module")
def meta_dir(hf_model, tmp_path_factory):
  return _write_meta(tmp_path_factory.mktemp("meta") / "7B", hf_model)


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
  directory = tmp_path_factory.mktemp("hf")
  hf_model.save_pretrained(directory)
  shutil.copy(META_TOKENIZER, directory / "tokenizer.model")
  return directory


@pytest.fixture(scope="module")
def orbax_run(hf_dir, tmp_path_factory):
  run = tmp_path_factory.mktemp("orbax") / "run"
  hf_to_orbax(hf_dir, run)
  return run


def _our_logits(ckpt, tokens):
  loaded = load_model(ckpt, dtype="float32", devices=jax.devices()[:1])
  model = nnx.merge(nnx.graphdef(abstract_model(loaded.model_config)), loaded.params)
  return np.asarray(model(jnp.asarray(tokens)))


def _run_params(run):
  config = ModelConfig.from_dict(json.loads((run / "config.json").read_text())["model"])
  return _host_params(run, config, None)[0]


def _assert_identical_trees(a, b):
  flat_a, flat_b = (dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in (a, b))
  assert flat_a.keys() == flat_b.keys()
  for path, value in flat_a.items():
    assert value.dtype == flat_b[path].dtype, jax.tree_util.keystr(path)
    assert np.array_equal(value, flat_b[path]), jax.tree_util.keystr(path)


def test_meta_checkpoint_through_the_cli_gives_the_logits_of_transformers(
    hf_model, meta_dir, orbax_run, tmp_path):
  dst = tmp_path / "converted"
  main(["meta-to-orbax", str(meta_dir), str(dst)])
  assert sorted(p.name for p in dst.iterdir()) == ["checkpoints", "config.json",
                                                   "tokenizer.model"]
  config = json.loads((dst / "config.json").read_text())
  assert config["data"] == {"tokenizer": "tokenizer.model"}
  assert config["model"] | {"vocab_size": 102, "dim": 64, "n_layers": 3, "n_heads": 4,
                            "ffn_dim": 176, "norm_eps": 1e-5, "rope_theta": 20000.0,
                            "param_dtype": "float32"} == config["model"]
  # Meta's weights (no q/k permutation) land exactly where Hugging Face's (permuted) do.
  _assert_identical_trees(_run_params(dst), _run_params(orbax_run))
  # The run directory carries its tokenizer: it loads after being moved.
  moved = dst.rename(tmp_path / "moved")
  tokens = _tokens()
  assert np.max(np.abs(_our_logits(moved, tokens) - _hf_logits(hf_model, tokens))) <= 1e-4


def test_hf_orbax_hf_and_orbax_hf_orbax_are_bit_exact(hf_dir, orbax_run, tmp_path):
  out = tmp_path / "hf"
  orbax_to_hf(orbax_run, out)
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors",
                                                   "tokenizer.model"]
  source, back = load_file(hf_dir / "model.safetensors"), load_file(out / "model.safetensors")
  assert source.keys() == back.keys()
  for name, tensor in source.items():
    assert tensor.dtype == back[name].dtype and np.array_equal(tensor, back[name]), name
  read = [json.loads((d / "config.json").read_text()) for d in (hf_dir, out)]
  assert model_config_from_hf(read[0]) == model_config_from_hf(read[1])
  defining = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
              "max_position_embeddings", "rms_norm_eps", "rope_parameters", "attention_bias",
              "mlp_bias", "tie_word_embeddings", "bos_token_id", "eos_token_id", "dtype")
  loaded = [LlamaConfig.from_pretrained(d).to_dict() for d in (hf_dir, out)]
  assert {k: loaded[0][k] for k in defining} == {k: loaded[1][k] for k in defining}
  assert (out / "tokenizer.model").read_bytes() == META_TOKENIZER.read_bytes()

  again = tmp_path / "orbax"
  hf_to_orbax(out, again)
  _assert_identical_trees(_run_params(again), _run_params(orbax_run))


def test_transformers_loads_the_sharded_hf_output_with_our_logits(orbax_run, tmp_path):
  out = tmp_path / "hf"
  orbax_to_hf(orbax_run / "checkpoints" / "0", out, max_shard_size="100KB")
  index = json.loads((out / "model.safetensors.index.json").read_text())
  files = sorted(p.name for p in out.glob("*.safetensors"))
  assert len(files) > 2 and sorted(set(index["weight_map"].values())) == files
  assert index["metadata"]["total_size"] == sum(
      t.nbytes for f in files for t in load_file(out / f).values())
  model = LlamaForCausalLM.from_pretrained(out).eval()
  tokens = _tokens()
  assert np.max(np.abs(_hf_logits(model, tokens) - _our_logits(orbax_run, tokens))) <= 1e-4


def test_bfloat16_storage_round_trips(hf_dir, orbax_run, tmp_path):
  hf_to_orbax(hf_dir, tmp_path / "orbax", dtype="bfloat16")
  config = json.loads((tmp_path / "orbax" / "config.json").read_text())
  assert config["model"]["param_dtype"] == "bfloat16"
  bf16 = _run_params(tmp_path / "orbax")
  rounded = jax.tree.map(lambda w: w.astype(jnp.bfloat16), _run_params(orbax_run))
  _assert_identical_trees(bf16, rounded)
  orbax_to_hf(tmp_path / "orbax", tmp_path / "hf")  # in the run's own dtype
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  source, back = load_file(hf_dir / "model.safetensors"), load_file(
      tmp_path / "hf" / "model.safetensors")
  for name, tensor in source.items():
    assert np.array_equal(tensor.astype(jnp.bfloat16), back[name]), name


class _Planted:
  """Unpickling this runs open(path, "w"): the file appearing is the code having run."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return open, (self.path, "w")


def test_a_pth_pickling_objects_is_refused_unexecuted(meta_dir, tmp_path):
  source = tmp_path / "7B"
  shutil.copytree(meta_dir, source)
  marker = tmp_path / "code-ran"
  state = torch.load(source / "consolidated.01.pth", weights_only=True)
  torch.save({**state, "extra": _Planted(marker)}, source / "consolidated.01.pth")
  with pytest.raises(ValueError, match=r"consolidated\.01\.pth: refused to load: it pickles "
                                       r"objects other than tensors.*it calls io\.open"):
    meta_to_orbax(source, tmp_path / "out", tokenizer=META_TOKENIZER)
  assert not marker.exists()
  assert not (tmp_path / "out").exists()


def _broken_meta(meta_dir, tmp_path, rank=None, change=None, params=None):
  """A copy of meta_dir with `change` applied to one rank's tensors, or other params.json."""
  source = tmp_path / "7B"
  shutil.copytree(meta_dir, source)
  shutil.copy(meta_dir.parent / "tokenizer.model", tmp_path)
  if change:
    state = torch.load(source / f"consolidated.{rank:02d}.pth", weights_only=True)
    change(state)
    torch.save(state, source / f"consolidated.{rank:02d}.pth")
  if params:
    (source / "params.json").write_text(json.dumps(params))
  return source


@pytest.mark.parametrize("rank, change, params, error, message", [
    (None, None, {"dim": 64}, ValueError,
     r"7B/params.json lacks \['n_heads', 'n_layers'\]: is it Meta's params.json"),
    (1, lambda s: s.pop("layers.1.attention.wk.weight"), None, ValueError,
     r"consolidated.01.pth lacks 1 tensors, e.g. \['layers.1.attention.wk.weight'\] "
     r"\(.*params.json says n_layers=3\): the file is incomplete or from another model; "
     r"re-download it"),
    (0, lambda s: s.update({"layers.3.ffn_norm.weight": torch.ones(64)}), None, ValueError,
     r"consolidated.00.pth has 1 tensors this model has no place for, e.g. "
     r"\['layers.3.ffn_norm.weight'\] .*check that params.json belongs to these weights"),
    (1, lambda s: s.update({"layers.2.feed_forward.w2.weight": torch.ones(64, 80)}), None,
     ValueError, r"ranks disagree on the shape of tensor 'layers.2.feed_forward.w2.weight': "
     r"consolidated.00.pth has \(64, 88\), consolidated.01.pth has \(64, 80\); the files in "
     r".*7B come from different checkpoints: re-download them"),
    (1, lambda s: s["norm.weight"].mul_(2), None, ValueError,
     r"ranks disagree on the replicated tensor 'norm.weight': consolidated.01.pth differs"),
    (None, None, {**META_PARAMS, "dim": 128}, ValueError,
     r"params.json says dim=128, but tok_embeddings.weight in 2 ranks has dim 64"),
    (None, None, {**META_PARAMS, "n_kv_heads": 1}, ValueError, r"grouped-query attention"),
])
def test_broken_meta_checkpoints_are_named(meta_dir, tmp_path, rank, change, params, error,
                                           message):
  source = _broken_meta(meta_dir, tmp_path, rank, change, params)
  with pytest.raises(error, match=message):
    meta_to_orbax(source, tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_feed_forward_size_off_meta_rule_is_warned_about(meta_dir, tmp_path):
  source = _broken_meta(meta_dir, tmp_path, params={**META_PARAMS, "multiple_of": 256})
  with pytest.warns(UserWarning, match=r"dim=64 and multiple_of=256 give a feed-forward size of "
                                       r"256 by Meta's rule, but the weights have 176"):
    config = MetaCheckpoint(source).model_config()
  assert config.ffn_dim == 176


def test_missing_params_json_and_a_full_destination_are_named(meta_dir, orbax_run, tmp_path):
  source = _broken_meta(meta_dir, tmp_path)
  (source / "params.json").unlink()
  with pytest.raises(FileNotFoundError, match=r"7B/params.json not found: SRC must be a "
                                              r"directory of Meta's LLaMA release"):
    meta_to_orbax(source, tmp_path / "out")
  with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory \(expected Meta's"):
    meta_to_orbax(tmp_path / "nowhere", tmp_path / "out")
  with pytest.raises(FileExistsError, match=rf"destination {orbax_run} is not empty; choose "
                                            r"another, or give --force"):
    main(["meta-to-orbax", str(meta_dir), str(orbax_run)])
  out = tmp_path / "hf"
  orbax_to_hf(orbax_run, out)
  (out / "README.md").write_text("kept")
  with pytest.raises(FileExistsError, match="is not empty"):
    orbax_to_hf(orbax_run, out)
  orbax_to_hf(orbax_run, out, force=True, max_shard_size="100KB")
  assert not (out / "model.safetensors").exists() and (out / "README.md").read_text() == "kept"
  with pytest.raises(ValueError, match="is \\(or holds\\) the source"):
    orbax_to_hf(orbax_run, orbax_run, force=True)


def test_the_command_line_reports_errors_without_a_traceback(tmp_path):
  (tmp_path / "7B").mkdir()
  run = subprocess.run([sys.executable, "-m", "llama_jax.convert", "meta-to-orbax",
                        str(tmp_path / "7B"), str(tmp_path / "out")],
                       capture_output=True, text=True, check=False)
  assert run.returncode == 1
  assert run.stderr.strip().endswith(f"error: {tmp_path / '7B' / 'params.json'} not found: SRC "
                                     "must be a directory of Meta's LLaMA release (e.g. "
                                     "llama/7B) holding params.json and consolidated.00.pth ...")
  assert "Traceback" not in run.stderr
