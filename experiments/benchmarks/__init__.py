"""Benchmarks: speed numbers, never pass/fail tests. ``mixerlab bench`` runs ``speed`` (tokens/s
against reference implementations, Lightning's overhead, the data loader) and ``scaling`` (cost
against sequence length); ``compare_speed`` times ``mixerlab compare`` and ``gpu_check`` runs the
GPU path once. Every one times the same bare step (``training_step``)."""
