"""lmforge data plane: the jobs that run inside pods (data, train, eval, serve)."""
