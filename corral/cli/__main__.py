"""``python -m corral.cli``: the ``corral`` command without its console script.

Subprocesses use this form (``corral.local``, ``registry.governance``,
``torch.distributed.run ... -m corral.cli train``) so they run the same
interpreter as their parent.
"""

from corral.cli import main

main()
