import sys

from lmforge.jobs.data.job import main

sys.exit(main())
