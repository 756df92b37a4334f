import sys

from macvtap_hook.entry import main

sys.exit(main())
