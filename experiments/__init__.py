"""mixerlab entry points: train, list, compare, bench."""
