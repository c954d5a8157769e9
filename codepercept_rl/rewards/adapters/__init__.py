"""Adapters that serve the rewards to peer frameworks: TRL (``trl``), verl (``verl``), OpenRLHF (``openrlhf``)."""
