"""``python -m bench.delivery``: see the package's docstring."""

from bench.delivery import main

main()
