"""``python -m bench.e2e``: see the package's docstring."""

from bench.e2e import main

main()
