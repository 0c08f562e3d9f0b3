"""Rank statistics used to judge what a model learned: ranks, Spearman correlation, ROC AUC
and background rejection at a fixed signal efficiency."""
from __future__ import annotations

import numpy as np


def ranks(v) -> np.ndarray:
    """Ranks 1..n of v, ties given their average rank."""
    v = np.asarray(v)
    order = np.argsort(v, kind="mergesort")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=r) / counts)[inv]


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks."""
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def roc_auc(background, signal) -> float:
    """P(signal score > background score), ties counting ½ (Mann-Whitney U / n_s n_b)."""
    background, signal = np.asarray(background), np.asarray(signal)
    r = ranks(np.concatenate([background, signal]))
    r_sig = r[len(background):].sum()
    return float((r_sig - len(signal) * (len(signal) + 1) / 2) / (len(signal) * len(background)))


def rejection_at(background, signal, efficiency=0.3) -> float:
    """1/ε_B at the cut that keeps ``efficiency`` of the signal (higher score = signal-like)."""
    cut = np.quantile(np.asarray(signal), 1 - efficiency)
    eps_b = np.mean(np.asarray(background) >= cut)
    return float(1 / eps_b) if eps_b > 0 else float("inf")
