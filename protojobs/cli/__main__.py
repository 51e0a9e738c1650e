import sys

from protojobs.cli.main import main

sys.exit(main())
