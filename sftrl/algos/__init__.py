"""Pure tensor math of the RL and hybrid steps, in registries: advantages, surrogates, weightings and
KL (`policy`), entropy controllers (`entropy`), token filters (`filters`), supervision inside RL
(`hybrid`), and `Algo`, the registry functions of a config bound once (`algo`)."""
