"""Benchmarks for code models: HumanEval, MBPP and HumanEval-infilling, scored by running programs in the sandbox.

  evals/humaneval.py, mbpp.py, infilling.py   one benchmark each: data, prompt, stop sequences, program
  evals/runner.py                             generate or read samples, score, resume, report
  evals/execution.py                          the verdict contract (nonce line) on top of sandbox.run_many
  evals/passk.py                              the unbiased pass@k estimator
  evals/cli.py                                `codelm eval ...`
"""
