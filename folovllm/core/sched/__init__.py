"""The scheduler (``scheduler.py``) and what it hands the worker (``output.py``).

Empty on purpose: a worker imports ``core.sched.output`` and nothing else of
the scheduler's, so importing it must not pull the scheduler in.
"""
