"""The local backend behind `lmforge run`: the same resources, run as processes on this machine."""
