"""`python -m recipes.demo_model {data,train,evaluate,install,all} OUTPUT`."""

import sys

from .cli import main

sys.exit(main())
