"""The training loop: the RL step (`rl_step`) and the SFT step, the phase schedule (`fit`), the
state a run threads through its steps and saves in checkpoints, evaluation and progress."""
