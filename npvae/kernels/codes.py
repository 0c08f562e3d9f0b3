"""The activation codes that both kernel backends share: one enumeration, its names and its
integers (numba kernels branch on the integers, frozen as module constants)."""
from enum import IntEnum


class Act(IntEnum):
    identity = 0
    relu = 1
    leaky_relu = 2
    elu = 3
    tanh = 4
    sigmoid = 5
    softplus = 6


ACT_NAMES = tuple(a.name for a in Act)
ACT_CODES = {a.name: int(a) for a in Act}
IDENTITY, RELU, LEAKY_RELU, ELU, TANH, SIGMOID, SOFTPLUS = (int(a) for a in Act)
