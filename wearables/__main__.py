"""``python -m wearables --config wearable.yaml``: the sensor agent without the other roles."""

import sys

from wearables.cli import main

sys.exit(main())
