"""``python -m noisyseg`` is the ``noisyseg`` command; ``torchrun ... -m noisyseg run`` starts one
process of a data-parallel run per GPU (or CPU share)."""

from noisyseg.cli import main

main()
