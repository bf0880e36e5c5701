"""Evaluation as the paper's section 3 (which follows EleutherAI's lm-evaluation-harness).

    python -m llama_jax.eval --ckpt=DIR --tasks=hellaswag,piqa --data_dir=DATA --output=results.json

Cut by concern; both task families (likelihood and generative) share the readers, the few-shot
sampler and the results:

__main__.py          the command line: tasks resolved, the checkpoint loaded once, results written
registry.py          every task by name (resolve_tasks, groups expanded); EvalModel, EvalSettings:
                     what `task.evaluate(model, data_dir, settings)` takes, whatever the family
likelihood.py        the likelihood benchmarks (common sense, RACE, MMLU, CrowS-Pairs, WinoGender,
                     TruthfulQA MC): items as scored options, few-shot prompts, evaluate_likelihood
generative.py        the generative benchmarks (NQ, TriviaQA, GSM8k, MATH, HumanEval, MBPP): items,
                     prompts, the paper's generation settings, scoring, evaluate_generative
readers.py           the released files read (JSON lines, JSON, CSV/TSV, labels), faults named by
                     file, line and field (TaskDataError)
fewshot.py           shots drawn as the harness's samplers draw them (FEWSHOT_SEED)
answers.py           answers normalized, extracted and compared: exact match, maj1@k, pass@k
harness.py           metrics averaged with standard errors, results.json, the printed table
scoring.py           log-likelihoods on a sharded, jitted model in a few fixed shapes
sandbox.py           generated code run against a benchmark's tests, apart from this process;
                     sandbox_child.py runs inside the sandboxed interpreter, sandbox_policy.py holds
                     every denial with its reason
periodic.py          evaluation during training, every `eval.every_steps` steps
lm_eval_adapter.py   our model as an lm-evaluation-harness model (`--model llama_jax`)
lm_eval.py           `python -m llama_jax.eval.lm_eval`: the harness's command line with our model
"""
