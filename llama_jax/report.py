"""The recipe's report (llama_jax.recipe): WORKDIR/report.md, and report.html rendering the same.

Every number is read from what the stages wrote: preprocessing's stats.json per source, the token
shards' index.json, the training run's metrics.jsonl, the evaluation's results.json, the
samples' JSONL and stages.json (wall time per stage).
"""

from __future__ import annotations

import datetime
import html
import json
import re
from pathlib import Path

import jax
from markdown_it import MarkdownIt

from llama_jax import metrics
from llama_jax.data import INDEX_FILE, sources_by_share
from llama_jax.jsonl import read_jsonl
from llama_jax.model import ModelConfig, abstract_model, count_params

STAGE_ORDER = ("language_id", "preprocess", "tokenizer", "shards", "train", "eval", "samples",
               "report")


def _table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row)
            + " |" for row in rows]
  return "\n".join(lines)


def _reasons(counts: dict[str, int]) -> str:
  return ", ".join(f"{reason} {n:,}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def corpus_section(workdir: Path, sources: list[str]) -> str:
  rows, totals = [], [0, 0, 0, 0]
  for name in sources:
    stats = json.loads((workdir / "documents" / name / "stats.json").read_text())
    dropped, malformed = sum(stats["dropped"].values()), sum(stats["malformed"].values())
    counts = [stats["documents_read"], stats["documents_written"], dropped, malformed]
    totals = [t + c for t, c in zip(totals, counts, strict=True)]
    skipped = stats["settings"].get("skip")
    rows.append([name, *(f"{c:,}" for c in counts), _reasons(stats["dropped"]) or "-",
                 _reasons(stats["malformed"]) or "-",
                 (f"skipped steps: {skipped}; " if skipped else "")
                 + (_reasons(stats.get("lines_removed", {})) or "")])
  rows.append(["**all**", *(f"**{t:,}**" for t in totals), "", "", ""])
  return ("## 1. Corpus: documents in, kept and dropped\n\n"
          "Each source's raw files (examples/mini_corpus) through its Beam pipeline on the "
          "DirectRunner; every document not kept is counted by reason (stats.json). Read "
          "counts the documents that reached the filters; drops made before a document exists "
          "count input records (StackExchange: posts of unselected sites, answers without a "
          "question, empty answers), so there kept + dropped can exceed read.\n\n"
          + _table(["source", "read", "kept", "dropped", "malformed", "dropped by reason",
                    "malformed by reason", "notes (lines removed, steps skipped)"], rows))


def mixture_section(config, workdir: Path, sources: list[str], last: dict) -> str:
  shares = {name: config.data.shares[name] for name in sources}
  sequence_length = config.model.context_length + 1
  indexes = {name: json.loads((workdir / "tokens" / name / INDEX_FILE).read_text())
             for name in sources}
  drawn = {name: last.get(f"sequences/{name}", 0) for name in sources}
  total_drawn, total_share = sum(drawn.values()), sum(shares.values())
  total_tokens = sum(index["tokens"] for index in indexes.values())
  rows = []
  for name in sources:
    tokens = indexes[name]["tokens"]
    documents = sum(shard["documents"] for shard in indexes[name]["shards"])
    rows.append([name, f"{documents:,}", f"{tokens:,}", f"{100 * tokens / total_tokens:.1f}",
                 f"{100 * shares[name] / total_share:.1f}",
                 f"{100 * drawn[name] / total_drawn:.1f}" if total_drawn else "-",
                 f"{drawn[name] * sequence_length / tokens:.2f}"])
  vocab = indexes[sources[0]]["vocab_size"]
  return ("## 2. Tokens per source and the training mixture\n\n"
          f"SentencePiece BPE with the paper's settings (digits split, byte fallback), "
          f"{vocab:,} pieces, trained on the kept documents. Training draws each sequence "
          f"from a source chosen by the Table 1 shares (configured), whatever the source's "
          f"size, so small sources are repeated (epochs); observed: the {total_drawn:,} "
          f"sequences of {sequence_length} tokens drawn in training.\n\n"
          + _table(["source", "documents", "tokens", "% of tokens", "configured share %",
                    "observed share %", "epochs"], rows))


def training_section(config, records: list[dict]) -> str:
  first, last = records[0], records[-1]
  optim = config.optim
  return ("## 3. Training\n\n"
          f"![loss and learning rate](loss.png)\n\n"
          f"{last['step']} steps of {config.train.batch_size} x {config.model.context_length} "
          f"tokens ({last['tokens']:,} tokens); model dim {config.model.dim}, "
          f"{config.model.n_layers} layers, {config.model.n_heads} heads, vocabulary "
          f"{config.model.vocab_size}. AdamW (b1 {optim.b1}, b2 {optim.b2}, weight decay "
          f"{optim.weight_decay}, clipping {optim.grad_clip_norm}); learning rate 0 -> "
          f"{optim.peak_lr:g} over {optim.warmup_steps} warm-up steps, then cosine to "
          f"{optim.final_lr_ratio:g} x the peak (dashed line). Loss {first['loss']:.3f} at step "
          f"{first['step']} -> {last['loss']:.3f} at step {last['step']}; skipped updates "
          f"{last['skipped_updates']}, rollbacks {last['rollbacks']}.")


def _percent(value: float) -> str:
  return f"{100 * value:.1f}"


def evaluation_section(config, results: dict, tokens: int) -> str:
  rows = []
  paper = results["paper_llama_7b"]
  for task, values in results["results"].items():
    names = ([paper[task]["metric"]] if task in paper else
             [k for k in values if f"{k}_stderr" in values])
    for name in names:
      rows.append([task, name, _percent(values[name]), _percent(values[f"{name}_stderr"]),
                   values.get(f"{name}_n", values["n"]), values["num_fewshot"],
                   f"{paper[task]['value']:.1f}" if task in paper else "-"])
  return ("## 4. Evaluation\n\n"
          "**A tiny-model demonstration, not a reproduction**: a model of "
          f"{count_params(abstract_model(ModelConfig.from_dict(config.model))):,} parameters "
          f"trained on {tokens:,} tokens, scored on the few items of each "
          "benchmark sample the repository ships (tests/data/eval), beside LLaMA-7B's score in "
          "the paper (1T tokens, full benchmarks). Prompts and metrics are "
          "lm-evaluation-harness 0.4.13's, as `python -m llama_jax.eval`.\n\n"
          + _table(["task", "metric", "this model", "± stderr", "n", "shots",
                    "LLaMA-7B (paper)"], rows)
          + "\n\n-: no LLaMA-7B figure for the task in the project's copy of the paper's "
          "numbers (llama_jax/eval/likelihood.py).")


def samples_section(samples_path: Path, settings) -> str:
  lines = ["## 5. Samples\n",
           f"Temperature {settings.temperature}, top-p {settings.top_p}, at most "
           f"{settings.max_new_tokens} new tokens, seed {settings.seed}.\n"]
  for _, record in read_jsonl(samples_path):
    for completion in record["completions"]:
      text = record["prompt"] + completion
      # A fence longer than any run of backticks in the text (models write code fences too).
      fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))
      lines.append(f"**Prompt:** `{record['prompt']!r}`\n\n{fence}text\n{text}\n{fence}\n")
  return "\n".join(lines)


def energy_section(config, last: dict) -> str:
  energy = config.energy
  source = ("NVML energy counters" if last["energy_source"] == "nvml" else
            f"the nominal {energy.watts_per_device:g} W per device (the paper's A100 figure; "
            "this CPU run draws far less)")
  return ("## 6. Energy and carbon\n\n"
          "As the paper's Table 15: MWh = device-hours x watts x PUE "
          f"{energy.pue}, tCO2eq = MWh x {energy.tco2_per_mwh} (US average); power from "
          f"{source}.\n\n"
          + _table(["device-hours", "MWh", "tCO2eq"],
                   [[f"{last['gpu_hours']:.4g}", f"{last['energy_mwh']:.4g}",
                     f"{last['tco2eq']:.4g}"]]))


def stages_section(stage_times: dict) -> str:
  order = {name: i for i, name in enumerate(STAGE_ORDER)}
  names = sorted(stage_times, key=lambda n: (order.get(n.split("/")[0], len(order)), n))
  rows = [[name, f"{stage_times[name]['seconds']:.1f}" if "seconds" in stage_times[name] else "-",
           stage_times[name].get("this_run", "ran")] for name in names]
  total = sum(stage_times[name].get("seconds", 0) for name in names)
  rows.append(["**all**", f"**{total:.1f}**", ""])
  return ("## 7. Wall time per stage\n\n"
          "Seconds of each stage's last run; a stage whose outputs were complete is skipped "
          "and keeps the time of the run that made them.\n\n"
          + _table(["stage", "seconds", "this run"], rows))


def write_report(config, workdir: Path, stage_times: dict) -> Path:
  """Writes WORKDIR/report.md and report.html; returns the markdown's path."""
  sources = sources_by_share(config.data.shares)
  records = metrics.read_metrics(workdir / "train" / "metrics.jsonl")
  last = records[-1]
  results = json.loads((workdir / "eval" / "results.json").read_text())
  date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  header = ("# The LLaMA recipe in miniature: run report\n\n"
            f"{date}; jax {jax.__version__} on {jax.device_count()} x "
            f"{jax.devices()[0].device_kind}; work directory `{workdir}`. Raw documents -> "
            "preprocessing -> tokenizer -> token shards -> training -> evaluation -> samples, "
            "with `python -m llama_jax.recipe`. Sized to run on two CPU cores in minutes: the "
            "numbers show that the parts fit together, not what LLaMA-7B scores.")
  samples = samples_section(workdir / "samples.jsonl", config.recipe.samples)
  sections = [header, corpus_section(workdir, sources),
              mixture_section(config, workdir, sources, last), training_section(config, records),
              evaluation_section(config, results, last["tokens"]), samples,
              energy_section(config, last), stages_section(stage_times)]
  markdown = "\n\n".join(sections) + "\n"
  path = workdir / "report.md"
  path.write_text(markdown)
  body = MarkdownIt("commonmark").enable("table").render(markdown)
  path.with_suffix(".html").write_text(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
      f"<title>{html.escape('LLaMA recipe in miniature: report')}</title><style>"
      "body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.4}"
      "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
      "img{max-width:100%}pre{background:#f5f5f5;padding:.5em;white-space:pre-wrap}"
      f"</style></head><body>\n{body}</body></html>\n")
  return path
