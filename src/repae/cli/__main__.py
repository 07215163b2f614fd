"""``python -m repae.cli VERB ...`` (what torchrun and accelerate launch)."""

import sys

from repae.cli import main

sys.exit(main())
