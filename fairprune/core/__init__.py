"""Layer 0, the ground every other layer stands on: errors (``InputError``, ``Cancelled``), content hashes, and the
typed results with their one JSON form (:mod:`.result`). Imports nothing else of fairprune, and no torch.
"""
