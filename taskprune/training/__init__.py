"""Making the multi-task models that taskprune compresses: multi-task fine-tuning and the bert2bert warm start."""
