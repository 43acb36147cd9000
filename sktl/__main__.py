"""``python -m sktl`` runs the demo."""

from .demo import main

if __name__ == "__main__":  # not when pytest imports it for doctests
    main()
