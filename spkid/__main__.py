import sys

from spkid.cli import main

sys.exit(main())
