"""Training of the DisentangledSiamese metric: sampler, losses, loop."""
