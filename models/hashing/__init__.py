"""Learning to hash: SDOH (online, supervised) and the baselines it is compared with."""
