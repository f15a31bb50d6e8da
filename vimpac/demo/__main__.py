"""`python -m vimpac.demo`: see `vimpac.demo.driver`."""
import sys

from vimpac.demo.driver import main

sys.exit(main())
