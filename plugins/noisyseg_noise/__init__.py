"""Built-in noise models: ``dilation``, ``erosion``, ``elastic`` and ``none``."""

from __future__ import annotations

from noisyseg import NoiseModel, hookimpl
from noisyseg_noise.elastic import ElasticNoise
from noisyseg_noise.morphology import DilationNoise, ErosionNoise, NoNoise


@hookimpl
def register_noise_models() -> list[type[NoiseModel]]:
    return [DilationNoise, ErosionNoise, ElasticNoise, NoNoise]
