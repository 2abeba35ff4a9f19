"""Drop-in uses of causal scores in other pruning tools (Torch-Pruning, torch.nn.utils.prune)."""
