"""Algorithms: the learning side that enqueues rollouts, reads spans and publishes resources."""

from agl.algorithm.base import Algorithm
from agl.algorithm.decorator import FunctionalAlgorithm, algo
from agl.algorithm.fast import Baseline, FastAlgorithm

__all__ = ["Algorithm", "Baseline", "FastAlgorithm", "FunctionalAlgorithm", "algo"]
