"""`python -m faceptor.train --config CFG`, the form `accelerate launch -m faceptor.train` takes."""

import sys

from .run import main

sys.exit(main())
