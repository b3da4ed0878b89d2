"""python -m carvis.cli"""

import sys

from carvis.cli import main

sys.exit(main())
