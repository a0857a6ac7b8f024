import sys

from eventsnap_client.cli import main

sys.exit(main())
