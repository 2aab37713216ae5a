import sys

from ddmd_lab.commands.cli import main

sys.exit(main())
