"""The pruning core: a budget becomes per-group rates (allocate), rates and scores become a plan (plan, rates),
a plan becomes a physically smaller model (apply), whose kept weights may be re-solved (repair); low-rank
factorisation (lowrank) is the paper's SVD baseline."""
