"""``python -m sktl`` runs the demo."""

from .demo import main

main()
