"""Built-in noise models: ``dilation``, ``erosion``, ``elastic``, ``none``, and the literature's
protocols ``alphabeta``, ``markov``, ``jsrt`` and ``pseudo`` (see docs/noise.md)."""

from __future__ import annotations

from noisyseg import NoiseModel, hookimpl
from noisyseg_noise.alphabeta import AlphaBetaNoise
from noisyseg_noise.elastic import ElasticNoise
from noisyseg_noise.jsrt import JSRTNoise
from noisyseg_noise.markov import MarkovNoise
from noisyseg_noise.morphology import DilationNoise, ErosionNoise, NoNoise
from noisyseg_noise.pseudo import PseudoNoise


@hookimpl
def register_noise_models() -> list[type[NoiseModel]]:
    return [DilationNoise, ErosionNoise, ElasticNoise, NoNoise, AlphaBetaNoise, MarkovNoise,
            JSRTNoise, PseudoNoise]
