"""sftrl: supervised fine-tuning + RL from verifiable rewards for small reasoning models."""

__version__ = "0.1.0"
