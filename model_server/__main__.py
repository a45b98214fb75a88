"""``python -m model_server --config PATH``"""

import sys

from .server import main

sys.exit(main())
