"""Several processes: ranks, global normalisers and gradient sums (`dist`), and FSDP2 sharding
(`sharding`). With one process every function here is the identity."""
