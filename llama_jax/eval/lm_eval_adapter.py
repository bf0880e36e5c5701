"""Our model as an lm-evaluation-harness model, registered as `llama_jax`.

    python -m llama_jax.eval.lm_eval --model llama_jax --tasks hellaswag \
        --model_args ckpt=DIR[,tokenizer=FILE,dtype=float32,batch_size=N,mesh=D:F:T]

or from Python, once this module is imported:

    lm_eval.simple_evaluate(model="llama_jax", model_args="ckpt=DIR", tasks=["hellaswag"])

`ckpt` is what llama_jax.eval's --ckpt takes (a training run, one of its checkpoints, or a Hugging
Face LLaMA directory); `mesh` gives the data, fsdp and tensor sizes (-1: the rest of the devices).
The harness's `--batch_size` (an integer) sets rows per model call unless model_args does;
`--device` is not used: JAX places the model on the mesh's devices.

The harness builds the requests and splits (context, continuation) into tokens itself (TemplateLM);
the Scorer computes their log-likelihoods as the harness's `hf` model does, so a task's numbers
match `--model hf` on the same weights. Text is tokenized as `hf` tokenizes it for LLaMA:
SentencePiece with BOS in front. Generation tasks (`generate_until`) run on llama_jax.generate with
`hf`'s conventions: contexts cut on the left to leave max_gen_toks, greedy unless do_sample, the
new tokens decoded alone and cut before the first `until` string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax

# The harness's own models, registered before ours: get_model imports them only while the
# registry is empty, so registering `llama_jax` first would hide `hf` and the rest.
import lm_eval.models  # noqa: F401
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, simple_parse_args_string
from tqdm import tqdm

from llama_jax.eval.scoring import Scorer
from llama_jax.generate import GenerationSettings, Generator
from llama_jax.inference import load_model
from llama_jax.sharding import MESH_AXES

MODEL_ARGS = ("ckpt", "tokenizer", "dtype", "batch_size", "mesh", "seed")
_USAGE = ("model_args: ckpt=DIR (required), tokenizer=FILE, dtype=float32|bfloat16, "
          "batch_size=N, mesh=DATA:FSDP:TENSOR, seed=N (sampling)")
# The generation settings a generate_until request may carry (after the harness's
# normalize_gen_kwargs); any other is refused rather than ignored.
GENERATION_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")
DEFAULT_MAX_GEN_TOKS = 256  # the harness's
BOS_TEXT = "<s>"  # how the harness's `hf` model recognises text that already starts with BOS


def parse_mesh_arg(text: str | None) -> dict[str, int] | None:
  """{"data": D, "fsdp": F, "tensor": T} from "D:F:T" (model_args are split on commas)."""
  if text is None:
    return None
  parts = str(text).split(":")
  if len(parts) != len(MESH_AXES) or not all(p.lstrip("-").isdigit() for p in parts):
    raise ValueError(f"llama_jax: mesh={text!r}: write mesh=DATA:FSDP:TENSOR, three integers "
                     "(-1 for the rest of the devices), e.g. mesh=1:-1:1")
  return dict(zip(MESH_AXES, map(int, parts), strict=True))


def _positive_int(name: str, value) -> int:
  # The harness's CLI passes --batch_size as a string ("16", or "auto").
  if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
    raise ValueError(f"llama_jax: {name}={value!r} must be a positive integer (the Scorer runs "
                     "fixed shapes, so 'auto' batch sizes are not supported)")
  return int(value)


@register_model("llama_jax")
class LlamaJaxLM(TemplateLM):
  """A llama_jax Scorer behind lm-evaluation-harness's model interface."""

  def __init__(self, ckpt: str, tokenizer: str | None = None, dtype: str | None = None,
               batch_size: int | str = 16, mesh: str | None = None, seed: int | str = 0):
    super().__init__()
    # Values from model_args strings may arrive as numbers ("ckpt=123"): paths are text.
    loaded = load_model(str(ckpt), tokenizer=None if tokenizer is None else str(tokenizer),
                        dtype=dtype, mesh_config=parse_mesh_arg(mesh))
    batch_size = _positive_int("batch_size", batch_size)
    self.scorer = Scorer.from_loaded(loaded, batch_size)
    self.generator = Generator.from_loaded(loaded, batch_size)
    self.seed = int(seed)
    self.sp = self.scorer.tokenizer

  @classmethod
  def create_from_arg_string(cls, arg_string: str,
                             additional_config: Mapping | None = None) -> LlamaJaxLM:
    return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: Mapping,
                          additional_config: Mapping | None = None) -> LlamaJaxLM:
    unknown = sorted(set(arg_dict) - set(MODEL_ARGS))
    if unknown:
      raise ValueError(f"llama_jax: unknown model_args {', '.join(unknown)}; accepted {_USAGE}")
    if "ckpt" not in arg_dict:
      raise ValueError(f"llama_jax: no checkpoint given; {_USAGE}")
    # The evaluator adds batch_size (the CLI's --batch_size, 1 unless given), max_batch_size and
    # device for every model; batch_size from model_args wins, the other two do not apply here.
    args = dict(arg_dict)
    if (additional_config or {}).get("batch_size") is not None:
      args.setdefault("batch_size", additional_config["batch_size"])
    return cls(**args)

  # --- tokens --------------------------------------------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return self.sp.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self.sp.bos_id

  @property
  def max_length(self) -> int:
    return self.scorer.max_length

  def tok_encode(self, string: str, add_special_tokens: bool | None = None) -> list[int]:
    """SentencePiece ids, with BOS in front unless `add_special_tokens` is False. By default
    (None) a string that already starts with "<s>" gets that BOS and no second one, as `hf`."""
    if add_special_tokens is None and string.startswith(BOS_TEXT):
      return [self.sp.bos_id] + self.sp.encode(string[len(BOS_TEXT):])
    return self.sp.encode(string, bos=add_special_tokens is not False)

  def tok_decode(self, tokens: Sequence[int]) -> str:
    return self.sp.decode(tokens)

  # --- scoring -------------------------------------------------------------------------------

  def _score(self, pairs: Sequence[tuple[list[int], list[int]]], description: str,
             disable_tqdm: bool) -> list[tuple[float, bool]]:
    disable = disable_tqdm or jax.process_index() != 0
    with tqdm(total=len(pairs), desc=description, disable=disable) as bar:
      return self.scorer.loglikelihood_tokens(pairs, on_done=lambda _: bar.update())

  def _loglikelihood_tokens(self, requests,
                            disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """(log P(continuation), greedy) for TemplateLM's ((context, continuation), context tokens,
    continuation tokens) requests."""
    results = self._score([(context, continuation) for _, context, continuation in requests],
                          "Running loglikelihood requests", disable_tqdm)
    for (strings, _, _), result in zip(requests, results, strict=True):
      self.cache_hook.add_partial("loglikelihood", strings, result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each text's total log-likelihood, over disjoint windows of the model's context after a
    BOS prefix, as the harness's `hf` model computes it (the text's own BOS included)."""
    windows, owners = [], []
    for index, request in enumerate(requests):
      (text,) = request.args
      for window in get_rolling_token_windows(token_list=self.tok_encode(text),
                                              prefix_token=self.prefix_token_id,
                                              max_seq_len=self.max_length, context_len=1):
        windows.append(make_disjoint_window(window))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (loglikelihood, _) in zip(
        owners, self._score(windows, "Running loglikelihood_rolling windows", disable_tqdm),
        strict=True):
      totals[owner] += loglikelihood
    for request, total in zip(requests, totals, strict=True):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
    return totals

  def _settings(self, gen_kwargs: Mapping) -> GenerationSettings:
    if unknown := sorted(set(gen_kwargs) - set(GENERATION_KWARGS)):
      raise ValueError(f"llama_jax: generation kwargs {unknown} are not supported; it takes "
                       f"{', '.join(GENERATION_KWARGS)}")
    until = gen_kwargs.get("until") or []
    sample = bool(gen_kwargs.get("do_sample")) and float(gen_kwargs.get("temperature", 1.0)) > 0
    return GenerationSettings(
        max_new_tokens=int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
        temperature=float(gen_kwargs.get("temperature", 1.0)) if sample else 0.0,
        top_p=float(gen_kwargs.get("top_p") or 1.0), top_k=int(gen_kwargs.get("top_k") or 0),
        stop=tuple([until] if isinstance(until, str) else until))

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Continuations of (context, gen_kwargs) requests, as the harness's `hf` model writes them:
    the context with BOS, cut on the left to leave max_gen_toks; EOS or an `until` string ends
    the text, which is the new tokens decoded alone, cut before the first `until` string."""
    groups: dict[GenerationSettings, list[int]] = {}
    for index, request in enumerate(requests):
      groups.setdefault(self._settings(request.args[1]), []).append(index)
    results: list[str] = [""] * len(requests)
    disable = disable_tqdm or jax.process_index() != 0
    for settings, indices in groups.items():
      prompts = [self.tok_encode(requests[i].args[0]) for i in indices]
      completions = self.generator.generate_tokens(prompts, settings, self.seed,
                                                   progress=not disable)
      for i, (completion,) in zip(indices, completions, strict=True):
        text = self.tok_decode(completion.tokens)
        for stop in settings.stop:
          text = text.split(stop)[0]
        results[i] = text
        self.cache_hook.add_partial("generate_until", requests[i].args, text)
    return results

  def get_model_info(self) -> dict:
    """What was loaded, for the harness's results file."""
    return {"llama_jax_model": self.scorer.description,
            "tokenizer": str(self.sp.path),
            "model_dtype": self.scorer.model_config.dtype,
            "max_length": self.max_length,
            "mesh": dict(self.scorer.mesh_rules.mesh.shape)}
