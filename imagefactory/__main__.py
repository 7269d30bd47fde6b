"""`python -m imagefactory`"""

import sys

from .cli import main

sys.exit(main())
