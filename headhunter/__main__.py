import sys

from headhunter.cli import main

sys.exit(main())
