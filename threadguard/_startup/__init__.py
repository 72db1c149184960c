"""Start-up hooks that ``threadguard run`` puts on its children's PYTHONPATH."""
