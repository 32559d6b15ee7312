"""Reliability tests: crash loops, fencing races, injected faults, hostile input (issue 6).

Imported as the package ``chaos`` (pytest puts ``tests/`` on ``sys.path``), so that
producer processes started with the ``spawn`` method can import its modules.
"""
