"""Quality measured through the served system, with the baselines a user would otherwise pick."""
