"""RETA's Dynamic Retrieval Connection: a per-class pool of real candidates and the fit-complexity choice."""
