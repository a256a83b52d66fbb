import sys

from cowest.runner import main

sys.exit(main())
