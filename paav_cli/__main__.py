import sys

from paav_cli.cli import main

sys.exit(main())
