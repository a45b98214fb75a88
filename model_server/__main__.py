"""``python -m enclave_build.model_server --config PATH``"""

import sys

from .server import main

sys.exit(main())
