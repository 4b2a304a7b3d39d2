"""``python -m jetagent.cli``: the same as the ``jetagent`` command."""

from jetagent.cli import main

main()
