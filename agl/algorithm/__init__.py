"""Algorithms: the learning side that enqueues rollouts, reads spans and publishes resources."""

from agl.algorithm.apo import APO
from agl.algorithm.base import Algorithm
from agl.algorithm.decorator import FunctionalAlgorithm, algo
from agl.algorithm.fast import Baseline, FastAlgorithm
from agl.algorithm.verl import VERL

__all__ = ["APO", "VERL", "Algorithm", "Baseline", "FastAlgorithm", "FunctionalAlgorithm", "algo"]
