import sys

from macvtap_hook.cli import main

sys.exit(main())
