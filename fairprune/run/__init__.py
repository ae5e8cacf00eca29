"""Layer 3, running work: the run store, the background worker, the executors (local, Ray) and the CLI. May import
every layer below; nothing in fairprune imports it (the root's lazy API names :class:`~.store.RunStore`).
"""
