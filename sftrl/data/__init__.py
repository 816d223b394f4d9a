"""Problems and their rewards: task sources (`tasks`), answer checking (`verify`, `verify_worker`),
reward functions (`rewards`), and problem streams and demonstration batches (`streams`)."""
