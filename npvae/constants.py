"""The numbers that both kernel backends (the NumPy reference and the numba kernels) and the
readable building blocks use: each is written here once and imported everywhere else."""
from __future__ import annotations

import math

LOG_2PI = math.log(2 * math.pi)   # ln 2π, the Gaussian normalising constant per dimension
LOG_2 = math.log(2.0)
LEAKY_SLOPE = 0.01                # leaky ReLU: f(a) = a for a > 0, else 0.01 a

# The continuous Bernoulli's log-normaliser ln C(l), C = l / tanh(l/2), is evaluated by a
# Taylor series of (sinh t − t)/t³ = Σ_k t^{2k}/(2k+3)! below |l| = CB_TAYLOR_BELOW, where the
# closed form cancels; eight terms are exact to float64 there.
CB_TAYLOR_BELOW = 1.0
SINH_SERIES = tuple(1.0 / math.factorial(2 * k + 3) for k in range(8))
